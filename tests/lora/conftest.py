"""LoRA tests run tiny matrices: one intra-op thread avoids thread spin on a shared, loaded CPU."""

import torch

torch.set_num_threads(1)
