"""What a node's unit tests give it in place of the network and its disk: a transport that
serves files from memory and records uploads, an own dataset read from a real file, and a
model's right answers counted one sample at a time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from node.local_datasets import DataSpec, NodeDataset, load_node_dataset
from node.shared.model import ModelSpec, model_with_state, normalize
from node.shared.weights import sha256_hex
from node.transport import TransferError
from tests.node.shared.data_files import labelled_arrays, write_npz


class StubTransport:
    """Serves files by path (404 for others); records uploads, or refuses them with a status."""

    def __init__(self, files: dict[str, bytes], refuse: int | None = None) -> None:
        self.files = files
        self.refuse = refuse
        self.downloads: list[str] = []
        self.uploads: list[tuple[str, bytes]] = []

    async def download(self, path: str, sha256: str, into: bytearray | None = None) -> bytearray:
        self.downloads.append(path)
        if path not in self.files:
            raise TransferError(f"GET {path}: 404 not found", 404)
        assert sha256_hex(self.files[path]) == sha256
        return bytearray(self.files[path])

    async def upload_weights(self, path: str, parts: list[memoryview]) -> dict[str, Any]:
        if self.refuse is not None:
            raise TransferError(f"upload refused: {self.refuse}", self.refuse)
        self.uploads.append((path, b"".join(bytes(p) for p in parts)))
        return {"accepted": True}


def own_dataset(folder: Path, name: str = "own", samples: int = 30) -> NodeDataset:
    """A node's own dataset of ``samples`` 1x4x4 images in 3 classes, read from an .npz file
    as ``--data`` reads it (a fifth held out to test on)."""
    x, y = labelled_arrays(samples, (4, 4), classes=3)
    path = write_npz(folder / f"{name}.npz", x=x, y=y)
    return load_node_dataset(DataSpec(name, path), folder / "cache", test_split=0.2)


def right_answers(
    state: Mapping[str, torch.Tensor], spec: ModelSpec, x: torch.Tensor, y: torch.Tensor
) -> int:
    """How many of ``x`` a model with ``state`` labels ``y``, counted here, one by one."""
    model = model_with_state(spec, state)
    model.eval()
    with torch.no_grad():
        return sum(
            int(model(normalize(x[i : i + 1], spec)).argmax()) == int(y[i]) for i in range(len(y))
        )
