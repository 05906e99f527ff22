"""prefix_tuning_config: PEFT prefix tuning resolved from a config and sized by a parameter budget."""

from __future__ import annotations

import pytest
from peft import get_peft_model

from hf_enhance.lora import prefix_tuning_config
from tests.lora.tiny import tiny_config, tiny_model


@pytest.mark.parametrize(
    ("arch", "task"), [("llama", "CAUSAL_LM"), ("t5", "SEQ_2_SEQ_LM"), ("gpt2", "CAUSAL_LM")]
)
def test_budget_picks_the_longest_prefix_that_fits(arch: str, task: str) -> None:
    config = prefix_tuning_config(tiny_config(arch), budget=5000)
    assert config.task_type == task and config.num_layers == 2 and config.token_dim is not None

    def trainable(n: int) -> int:
        model = get_peft_model(tiny_model(arch), prefix_tuning_config(tiny_config(arch), n))
        return model.get_nb_trainable_parameters()[0]

    assert trainable(config.num_virtual_tokens) <= 5000 < trainable(config.num_virtual_tokens + 1)


def test_explicit_length_and_projection() -> None:
    config = prefix_tuning_config(tiny_config("llama"), 7, prefix_projection=True, encoder_hidden_size=16)
    assert config.num_virtual_tokens == 7 and config.prefix_projection


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {}, "exactly one of"),
        ((3,), {"budget": 100}, "exactly one of"),
        ((0,), {}, "positive int"),
        ((), {"budget": 10}, "below one virtual token"),
    ],
)
def test_errors(args: tuple, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prefix_tuning_config(tiny_config("llama"), *args, **kwargs)
