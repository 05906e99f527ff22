"""Run by test_multiprocess.py under `torch.distributed.run --nproc_per_node 2` (CPU, gloo).

Process 1 sees its metric get worse, process 0 sees it improve: only process 1 decides to stop, and both must
stop at the same step. Each process writes its final step and stop reason to <output_dir>/rank<N>.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from hf_enhance.training import EnhancedTrainer
from tests.launch import finish_worker
from tests.training.tiny import TinyRegressor, make_args, regression_data, scripted_metric


def main(output_dir: str) -> None:
    args = make_args(
        Path(output_dir), num_train_epochs=6, metric_for_best_model="score", load_best_model_at_end=False,
        save_strategy="no", early_stopping_patience=1,
    )  # fmt: skip
    rank = args.process_index
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6] if rank == 0 else [0.1, 0.05, 0.0, 0.0, 0.0, 0.0]
    torch.manual_seed(0)
    trainer = EnhancedTrainer(
        model=TinyRegressor(),
        args=args,
        train_dataset=regression_data(),
        eval_dataset=regression_data(16),
        compute_metrics=scripted_metric(scores),
    )
    trainer.train()
    result = {"world_size": args.world_size, "step": trainer.state.global_step, "reason": trainer.stop_reason}
    (Path(output_dir) / f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
    finish_worker()
