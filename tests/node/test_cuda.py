"""The CUDA path is real: a round trains on the GPU when there is one (skipped, with the
reason, on machines without CUDA such as CI)."""

from __future__ import annotations

import pytest
import torch

from node.shared.model import ModelSpec, init_state
from node.shared.protocol import TrainConfig
from node.shared.weights import check_state, expected_layout
from node.trainer import measure_capacity, resolve_device, train_locally

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine"),
]


def test_auto_picks_cuda_and_a_round_trains_there() -> None:
    device = resolve_device("auto")
    assert device.type == "cuda"
    spec = ModelSpec()
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (257, 28, 28), dtype=torch.uint8, generator=generator)
    y = (x.float().mean(dim=(1, 2)) > 127.5).long()  # learnable: bright vs dark
    result = train_locally(
        spec, init_state(spec, 0), x, y, TrainConfig(), device=device, seed=1, val=(x[:32], y[:32])
    )
    assert all(t.device.type == "cpu" for t in result.state.values())  # ready to upload
    check_state(result.state, expected_layout(spec))
    assert result.samples == 257 and 0 <= result.metrics["val_accuracy"] <= 1
    assert measure_capacity(spec, device, seconds=0.2) > 0
