"""Labelled image sets on the wire and on disk: safetensors, ``x`` uint8 [N, ...], ``y`` int64 [N].

Dataset splits and per-node shards use the same format, so one decoder checks both.
"""

from __future__ import annotations

import torch

from node.shared.errors import WeightsError
from node.shared.weights import decode_tensors, encode_tensors


class ShardError(WeightsError):
    """A shard or split file that is not a valid labelled image set."""


def encode_xy(
    x: torch.Tensor, y: torch.Tensor, metadata: dict[str, str] | None = None
) -> bytearray:
    if x.dtype != torch.uint8 or y.dtype != torch.int64 or x.shape[0] != y.shape[0]:
        raise ShardError("x must be uint8 [N, ...] and y int64 [N]")
    return encode_tensors({"x": x, "y": y}, metadata)


def decode_xy(
    data: bytes | bytearray,
    *,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse and check a labelled set; ``input_shape``/``num_classes`` tighten the check."""
    try:
        tensors = decode_tensors(data)
    except WeightsError as exc:
        raise ShardError(str(exc)) from exc
    if set(tensors) != {"x", "y"}:
        raise ShardError(f"expected tensors 'x' and 'y', got {sorted(tensors)}")
    x, y = tensors["x"], tensors["y"]
    if x.dtype != torch.uint8 or y.dtype != torch.int64:
        raise ShardError(f"dtypes must be x uint8 and y int64, got {x.dtype} and {y.dtype}")
    if y.dim() != 1 or x.dim() < 2 or x.shape[0] != y.shape[0]:
        raise ShardError(f"shapes do not fit: x {tuple(x.shape)}, y {tuple(y.shape)}")
    if input_shape is not None and x.shape[1:].numel() != torch.Size(input_shape).numel():
        raise ShardError(f"samples have shape {tuple(x.shape[1:])}, model expects {input_shape}")
    if num_classes is not None and y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ShardError(f"labels must lie in [0, {num_classes})")
    return x, y
