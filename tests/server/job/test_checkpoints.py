"""A job's weights files with the server optimizer's state beside them."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pytest
import torch

from node.shared.errors import WeightsError
from node.shared.model import ModelSpec, init_state
from node.shared.weights import expected_layout
from server.core.server_opt import make_server_optimizer
from server.job.checkpoints import WeightsFiles, copier

SPEC = ModelSpec(hidden=(4,), dropout=())


def files(tmp_path: Path, job_id: str = "job-1") -> WeightsFiles:
    (tmp_path / job_id).mkdir(exist_ok=True)
    return WeightsFiles(tmp_path / job_id, job_id, SPEC, expected_layout(SPEC))


def test_an_optimizer_state_is_written_with_its_round_and_read_back(tmp_path: Path) -> None:
    layout = expected_layout(SPEC)
    optimizer = make_server_optimizer("fedadam", layout)
    start = init_state(SPEC, 0)
    optimizer.step(start, {k: v + 0.01 for k, v in start.items()})
    state = optimizer.state_dict()

    def fill(views: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        copier(start)(views)
        return state

    weights = files(tmp_path)
    published = weights.build(1, fill)
    weights.write(published)
    assert published.checkpoint.path.is_file()
    back = weights.read_optimizer_state(1)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    again = make_server_optimizer("fedadam", layout)
    again.load_state_dict(back)  # the shapes and names are the optimizer's own

    with pytest.raises(WeightsError, match="is missing"):
        weights.read_optimizer_state(2)
    other = files(tmp_path, "job-2")
    other.optimizer_path(1).write_bytes(weights.optimizer_path(1).read_bytes())
    with pytest.raises(WeightsError, match="not this job's round 1"):
        other.read_optimizer_state(1)


def test_fedavg_writes_no_optimizer_file(tmp_path: Path) -> None:
    weights = files(tmp_path)
    published = weights.build(1, copier(init_state(SPEC, 0)))
    weights.write(published)
    assert published.optimizer_state is None
    assert not weights.optimizer_path(1).exists()
