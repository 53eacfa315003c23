"""What-if experiments: candidate fixes applied to the real programs at start-up, so a
benchmark can measure a change before anyone makes it in ``server/`` or ``node/``.

``python -m tests.bench.run --whatif NAME[,NAME...]`` starts the server and the nodes
through ``probes.py`` with ``FEDAVG_BENCH_WHATIF`` set; each NAME below replaces one
function of the running program. These are sketches that keep the program's behaviour
for the benchmark's traffic, not reviewed code: the notes name the real change each one
stands for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

CHUNK = 1 << 20


def sqlite_normal() -> None:
    """server/store.py Store.__init__: ``synchronous=NORMAL`` (WAL: no fsync per commit)."""
    from server import store

    original = store.Store.__init__

    def init(self: Any, path: Any) -> None:
        original(self, path)
        self._db.execute("PRAGMA synchronous=NORMAL")

    store.Store.__init__ = init  # type: ignore[method-assign]


def stream_download() -> None:
    """server/app.py _bytes_with_etag: write the body in 1 MiB memoryview slices, awaiting
    the socket's drain, instead of one ``web.Response(body=...)`` that asyncio copies into
    a per-connection buffer of the whole model."""
    from aiohttp import web

    from server import app

    async def bytes_with_etag(
        request: web.Request, load: Callable[[], Awaitable[bytes]], sha256: str, kind: str
    ) -> web.StreamResponse:
        etag = f'"{sha256}"'
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        data = await load()
        app._fed(request).metrics.bytes_sent.labels(kind=kind).inc(len(data))
        resp = web.StreamResponse(
            headers={
                "ETag": etag,
                "X-Content-SHA256": sha256,
                "Content-Type": "application/octet-stream",
            }
        )
        resp.content_length = len(data)
        await resp.prepare(request)
        view = memoryview(data)
        for start in range(0, len(view), CHUNK):
            await resp.write(view[start : start + CHUNK])
        await resp.write_eof()
        return resp

    app._bytes_with_etag = bytes_with_etag


def meta_build() -> None:
    """node/trainer.py train_epoch and server/evaluate.py evaluate: build the model on the
    meta device and allocate it empty (``to_empty``), since ``load_state_dict`` overwrites
    every parameter anyway: no random initialisation of ~10 M parameters per round."""
    import torch

    from node import model, trainer

    def build(spec: Any) -> Any:
        with torch.device("meta"):
            net = model.build_model(spec)
        return net.to_empty(device="cpu")

    trainer.build_model = build  # type: ignore[attr-defined]
    try:
        from server import evaluate

        evaluate.build_model = build  # type: ignore[attr-defined]
    except ImportError:  # a node-only install
        pass


def lean_checks() -> None:
    """node/weights.py check_state: finiteness from one float64 sum per tensor (a NaN or Inf
    anywhere makes the sum non-finite; float64 cannot overflow on float32 inputs) instead of
    ``isfinite(t).all()``, which allocates a mask; and server/aggregation.py FedAvg.add:
    ``acc.add_(t, alpha=w)`` without a float64 temporary per tensor."""
    import torch

    from node import weights
    from node.errors import WeightsError

    def check_state(tensors: Mapping[str, torch.Tensor], layout: Any) -> None:
        missing = sorted(set(layout) - set(tensors))
        unexpected = sorted(set(tensors) - set(layout))
        if missing or unexpected:
            raise WeightsError(f"keys do not match: missing {missing}, unexpected {unexpected}")
        for name, (shape, _) in layout.items():
            tensor = tensors[name]
            if tuple(tensor.shape) != shape:
                raise WeightsError(f"{name}: shape {tuple(tensor.shape)} != expected {shape}")
            if tensor.dtype not in weights.ALLOWED_DTYPES:
                raise WeightsError(f"{name}: dtype {tensor.dtype} is not accepted")
            if not bool(torch.isfinite(tensor.sum(dtype=torch.float64))):
                raise WeightsError(f"{name}: contains NaN or Inf")

    weights.check_state = check_state
    try:
        from server import aggregation
    except ImportError:
        return
    aggregation.check_state = check_state  # type: ignore[attr-defined]

    def add(self: Any, node_id: str, tensors: Mapping[str, torch.Tensor], samples: int) -> None:
        self._gate.admit(node_id, tensors, samples)
        weight = samples if self.weighting == "weighted" else 1
        for key, acc in self._acc.items():
            acc.add_(tensors[key], alpha=weight)
        self._total += weight
        self._gate.commit(node_id)

    aggregation.FedAvg.add = add  # type: ignore[method-assign]


def node_download() -> None:
    """node/transport.py HttpTransport.download: one buffer of Content-Length filled through
    a memoryview, sha256 updated as the chunks arrive, returned as that bytearray (which
    ``decode_tensors`` views without a copy) — instead of ``+=`` growth, a second pass for
    the hash and a ``bytes()`` copy."""
    import aiohttp

    from node import transport
    from node.transport import MAX_DOWNLOAD_BYTES, TransferError

    async def download(self: Any, path: str, sha256: str) -> bytearray:
        from urllib.parse import urljoin

        url = urljoin(self.base_url + "/", path.lstrip("/"))
        digest = hashlib.sha256()
        try:
            async with self._http.get(url, headers=self._auth(), ssl=self._ssl) as resp:
                if resp.status != 200:
                    raise TransferError(f"GET {path}: {resp.status}", resp.status)
                size = resp.content_length or 0
                if size > MAX_DOWNLOAD_BYTES:
                    raise TransferError(f"GET {path}: {size} bytes is too large")
                body = bytearray(size)
                view, filled = memoryview(body), 0
                async for chunk in resp.content.iter_chunked(CHUNK):
                    end = filled + len(chunk)
                    if end > len(body):
                        raise TransferError(f"GET {path}: more bytes than Content-Length")
                    view[filled:end] = chunk
                    digest.update(chunk)
                    filled = end
                if filled != len(body):
                    raise TransferError(f"GET {path}: body ended early")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransferError(f"GET {path}: {exc!r}") from exc
        if digest.hexdigest() != sha256:
            raise TransferError(f"GET {path}: sha256 mismatch")
        return body

    transport.HttpTransport.download = download  # type: ignore[method-assign,assignment]


PATCHES: dict[str, Callable[[], None]] = {
    "sqlite_normal": sqlite_normal,
    "stream_download": stream_download,
    "meta_build": meta_build,
    "lean_checks": lean_checks,
    "node_download": node_download,
}


def apply(names: str) -> list[str]:
    """Apply the comma-separated patches (unknown names are an error); returns those applied."""
    chosen = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in PATCHES]
    if unknown:
        raise SystemExit(f"unknown what-if patches {unknown}; known: {sorted(PATCHES)}")
    for name in chosen:
        PATCHES[name]()
    return chosen
