"""A job's weights files: built in place, served from memory, checkpointed and read back.

Each round's global weights are laid out once as the bytes of their safetensors file; the
average is written into views of those bytes, which are then hashed, served and written
to disk as they are.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from node.shared.atomic import atomic_write_bytes
from node.shared.errors import WeightsError
from node.shared.model import ModelSpec
from node.shared.weights import (
    Layout,
    WeightsMeta,
    decode_tensors,
    decode_weights,
    encode_tensors,
    read_metadata,
    sha256_hex,
    weights_buffer,
)
from server import failpoints

OPTIMIZER_KEY = "fedavg_optimizer"  # the one metadata key of an optimizer state file

Fill = Callable[[Mapping[str, torch.Tensor]], Mapping[str, torch.Tensor] | None]
"""Writes a round's tensors into the views it is given; returns the server optimizer's state
after the round (its momentum or moments), if it keeps one, to be checkpointed with it."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    round: int
    path: Path
    sha256: str


@dataclass(frozen=True, slots=True)
class Published:
    """A round's global weights, out before they are evaluated and on disk."""

    checkpoint: Checkpoint
    data: bytearray  # the file, served from memory
    state: dict[str, torch.Tensor]  # views into ``data``
    # The server optimizer's state after this round; never served (nodes need no moments).
    optimizer_state: Mapping[str, torch.Tensor] | None = None


class WeightsFiles:
    """One job's round files: ``checkpoints`` names each one (round -> file and sha256);
    the newest, and any not on disk yet, are served from memory."""

    def __init__(
        self,
        run_dir: Path,
        job_id: str,
        spec: ModelSpec,
        layout: Layout,
        checkpoints: Mapping[int, Checkpoint] | None = None,
    ) -> None:
        self._run_dir = run_dir
        self._job_id = job_id
        self._spec = spec
        self._layout = layout  # on the wire: what the files hold
        self.checkpoints: dict[int, Checkpoint] = dict(checkpoints or {})
        self._latest: tuple[int, bytearray] | None = None  # what nodes download next
        self._unwritten: dict[int, bytearray] = {}  # published, checkpoint not on disk yet

    def build(self, round_: int, fill: Fill) -> Published:
        """A round's weights file, its tensors written in place by ``fill``, and its sha256."""
        meta = WeightsMeta(spec=self._spec, round=round_, job_id=self._job_id)
        data, state = weights_buffer(self._layout, meta)
        optimizer_state = fill(state)
        path = self._run_dir / f"round-{round_:04d}.safetensors"
        return Published(Checkpoint(round_, path, sha256_hex(data)), data, state, optimizer_state)

    def publish(self, published: Published, *, on_disk: bool = False) -> None:
        """Make ``published`` the newest weights, served from memory from now on."""
        round_ = published.checkpoint.round
        self.checkpoints[round_] = published.checkpoint
        self._latest = (round_, published.data)
        if not on_disk:
            self._unwritten[round_] = published.data

    def write(self, published: Published) -> None:
        """Write a checkpoint atomically (blocking: call it in a thread); the optimizer's
        state first, so a round's row never names weights without the state that goes on
        from them."""
        if published.optimizer_state is not None:
            round_ = published.checkpoint.round
            whose = json.dumps({"job_id": self._job_id, "round": round_})
            data = encode_tensors(published.optimizer_state, {OPTIMIZER_KEY: whose})
            atomic_write_bytes(self.optimizer_path(round_), data)
        atomic_write_bytes(
            published.checkpoint.path,
            published.data,
            lambda: failpoints.reach("checkpoint.before_rename"),
        )

    def written(self, round_: int) -> None:
        """A round's checkpoint is on disk: once it is not the newest, disk serves it."""
        self._unwritten.pop(round_, None)

    def release(self) -> None:
        """Drop the served bytes (the job is over): every later download reads disk."""
        self._latest = None
        self._unwritten.clear()

    async def bytes_of(self, round_: int) -> bytes | bytearray:
        """A round's global weights; the newest are served from memory, older ones from disk."""
        if self._latest is not None and self._latest[0] == round_:
            return self._latest[1]
        if round_ in self._unwritten:
            return self._unwritten[round_]
        return await asyncio.to_thread(self.checkpoints[round_].path.read_bytes)

    def optimizer_path(self, round_: int) -> Path:
        return self._run_dir / f"round-{round_:04d}.optimizer.safetensors"

    def read_optimizer_state(self, round_: int) -> dict[str, torch.Tensor]:
        """The server optimizer's state after ``round_`` (blocking), checked as any file
        from disk: it names this job and round."""
        path = self.optimizer_path(round_)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise WeightsError(f"{path} is missing: the server optimizer cannot go on") from None
        whose = read_metadata(data).get(OPTIMIZER_KEY)
        if whose != json.dumps({"job_id": self._job_id, "round": round_}):
            raise WeightsError(f"{path} is not this job's round {round_} ({whose!r})")
        return decode_tensors(data)  # the optimizer checks the keys and shapes it loads

    def read(self, round_: int) -> dict[str, torch.Tensor]:
        """A round's checkpoint from disk, checked against its recorded sha256 (blocking)."""
        checkpoint = self.checkpoints[round_]
        data = checkpoint.path.read_bytes()
        if sha256_hex(data) != checkpoint.sha256:
            raise WeightsError(f"checkpoint {checkpoint.path} does not match its recorded sha256")
        state, _ = decode_weights(data)
        return state


def copier(state: Mapping[str, torch.Tensor]) -> Fill:
    """A :data:`Fill` that copies ``state`` into the file's views."""

    def fill(views: Mapping[str, torch.Tensor]) -> None:
        for key, view in views.items():
            view.copy_(state[key])

    return fill
