"""Evaluating a global model on labelled uint8 images: the server on its test split, a node on
its own test split (blocking: run it in a worker thread)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from node.shared.model import ModelSpec, model_with_state, normalize

EVAL_BATCH = 2048


def evaluate(
    state: Mapping[str, torch.Tensor], spec: ModelSpec, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of weights ``state`` on uint8 images ``x``, labels ``y``."""
    model = model_with_state(spec, state, share=True)  # read only: no copy of the weights
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    correct, total_loss = 0, 0.0
    with torch.inference_mode():
        for start in range(0, len(y), EVAL_BATCH):
            xb, yb = normalize(x[start : start + EVAL_BATCH], spec), y[start : start + EVAL_BATCH]
            logits = model(xb)
            total_loss += float(loss_fn(logits, yb))
            correct += int((logits.argmax(1) == yb).sum())
    n = max(1, len(y))
    return correct / n, total_loss / n
