"""The aiohttp application: routes, error answers, and the lifecycle of shared services.

Handlers are thin: decode the request, call one ``Federation`` method, encode the answer.
"""

from __future__ import annotations

import asyncio
import errno
import re
import sys
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import WSCloseCode, web
from prometheus_client import CONTENT_TYPE_LATEST

from node.shared import __version__
from node.shared.errors import FedavgError, ProtocolError
from node.shared.protocol import UploadQuery
from server import jsonsafe
from server.core.job_request import train_view
from server.core.own_data import by_name
from server.core.partition import PartitionError, parse_partition
from server.datasets import CATALOG, DatasetError, DatasetInfo, ImportRequest, UnknownDataset
from server.errors import ApiError, BadRequest, Conflict, ErrorCode, NotFound, http_status
from server.evaluation_runs import evaluate_saved_model
from server.federation import Federation
from server.job.restore import run_history
from server.job_data import plan_shards
from server.settings import Settings
from server.store import Store
from server.web import monitor
from server.web.auth import node_session, require_admin
from server.web.connections import CONNECTIONS, ConnectionLimiter, track_requests
from server.web.guard import request_guard
from server.web.sockets import FEDERATION, OPEN_SOCKETS, dashboard_socket, node_socket
from server.web.transfer import bytes_with_etag, read_body, read_json_object

log = structlog.get_logger(__name__)

SETTINGS = web.AppKey("settings", Settings)
NODES_PAGE, NODES_PAGE_MAX = 500, 5000  # GET /nodes: the default and largest page
IMPORT_BODY_MAX = 256 << 10  # POST /datasets/import: a path and up to 1000 class names
# GET /runs/{run_id}: a run's rounds (at most its max_rounds) and a page of its per-node rows.
RUN_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}")
RUN_NODES_PAGE = RUN_NODES_PAGE_MAX = 20_000


def create_app(settings: Settings, clock: Callable[[], float] = time.time) -> web.Application:
    # The guard runs inside error_middleware, so its refusals get the one error shape.
    app = web.Application(
        middlewares=[track_requests, error_middleware, request_guard(settings)],
        client_max_size=1 << 20,
    )
    app[SETTINGS] = settings
    app[CONNECTIONS] = ConnectionLimiter.from_settings(settings)
    app[OPEN_SOCKETS] = weakref.WeakSet()

    async def services(app: web.Application) -> AsyncIterator[None]:
        for folder in (
            settings.home,
            settings.datasets_path,
            settings.models_path,
            settings.runs_path,
        ):
            folder.mkdir(parents=True, exist_ok=True)
        store = Store(
            settings.db_path, max_events=settings.max_events, max_node_ids=settings.max_node_ids
        )
        app[FEDERATION] = Federation(settings, store, clock)
        app[CONNECTIONS].on_refused = app[FEDERATION].metrics.connection_refused
        await app[FEDERATION].resume_unfinished()
        yield
        await app[FEDERATION].close()
        store.close()

    async def close_sockets(app: web.Application) -> None:
        open_sockets: weakref.WeakSet[web.WebSocketResponse] = app[OPEN_SOCKETS]
        for ws in list(open_sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")

    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader("server", "templates"))
    app.router.add_static("/static/", static_dir(), name="static")
    app.on_response_prepare.append(_revalidate_static)
    app.cleanup_ctx.append(services)
    app.on_shutdown.append(close_sockets)
    app.add_routes(routes())
    return app


MAX_MODEL_NAME = 255  # a file name, as the file system allows


def routes() -> list[web.RouteDef]:
    """Every HTTP and WebSocket route of the server."""
    return [
        web.get("/health", health),
        web.get("/nodes", nodes),
        web.get("/datasets", datasets),
        web.post("/datasets/prepare-mnist", prepare_mnist),
        web.post("/datasets/import", import_dataset),
        web.post("/datasets/{dataset_id}/prepare", prepare_dataset),
        web.post("/train/{dataset_id}/prepare", prepare_shards),
        web.post("/train/{dataset_id}", start_training),
        web.post("/jobs/stop", stop_training),
        web.post("/evaluate/{dataset_id}", evaluate_model),
        web.get("/sync/status", sync_status),
        web.get("/sync/weights", download_weights),
        web.post("/sync/weights", upload_weights),
        web.get("/shards/{run_id}/{node_id}", download_shard),
        web.get("/models", models),
        web.get("/models/{name}", download_model),
        web.get("/runs", runs),
        web.get("/runs/{run_id}", run_details),
        web.get("/metrics", prometheus_metrics),
        web.get("/monitor/overview", monitor_overview),
        web.get("/monitor/nodes", monitor_nodes),
        web.get("/monitor/timeline", monitor_timeline),
        web.get("/openapi.json", openapi_document),
        web.get("/", dashboard),
        web.get("/ws/node", node_socket),
        web.get("/ws/dashboard", dashboard_socket),
    ]


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """One error shape for every failure: ``{"error": {"code", "message"}}``."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
    except Exception as exc:
        status, code = http_status(exc)
        if status >= 500:
            log.exception("request_failed", path=request.path)
            return _error(status, code, "internal error; see the server log")
        return _error(status, code, str(exc))


def _error(status: int, code: str, message: str) -> web.Response:
    return _json({"error": {"code": code, "message": message}}, status=status)


def _json(data: Any, *, status: int = 200) -> web.Response:
    """Every JSON answer: NaN and Infinity are written as null (see server.jsonsafe)."""
    return web.json_response(data, status=status, dumps=jsonsafe.dumps)


def _fed(request: web.Request) -> Federation:
    return request.app[FEDERATION]


def int_query(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise BadRequest(f"query parameter {name!r} is required")
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name}={raw!r} is not an integer") from None
    if not lo <= value <= hi:
        raise BadRequest(f"{name} must be within {lo}..{hi}, got {value}")
    return value


# -- read-only ---------------------------------------------------------------------------------


async def health(request: web.Request) -> web.Response:
    fed = _fed(request)
    return _json(
        {
            "status": "ok",
            "version": __version__,
            "nodes": len(fed.registry.connected()),
            "job": fed.status()["state"],
        }
    )


async def nodes(request: web.Request) -> web.Response:
    # Public, ids included: an id is a name, not a credential. Saying hello with a listed id
    # needs the secret that id is bound to (Federation.node_joined), so listing it gives
    # nothing away. Paged, because anyone with the join token can add rows.
    limit = int_query(request, "limit", NODES_PAGE, 1, NODES_PAGE_MAX)
    offset = int_query(request, "offset", 0, 0, 2**31)
    page, total = _fed(request).nodes(limit, offset)
    return _json({"nodes": page, "total": total, "offset": offset, "limit": limit})


async def datasets(request: web.Request) -> web.Response:
    prepared = _fed(request).shelf.listed()
    ids = {d.dataset_id for d in prepared}
    catalog = [
        {
            "dataset_id": e.dataset_id,
            "title": e.title,
            "input_shape": list(e.input_shape),
            "num_classes": e.num_classes,
            "prepared": e.dataset_id in ids,
            "offline_fallback": e.offline_fallback,
        }
        for e in CATALOG.values()
    ]
    connected = _fed(request).registry.connected()
    announced = by_name({s.node_id: s.own_data for s in connected if s.own_data})
    return _json(
        {
            "datasets": [d.to_dict() for d in prepared],
            "catalog": catalog,
            "announced": [named.view() for named in announced],
        }
    )


async def sync_status(request: web.Request) -> web.Response:
    return _json(_fed(request).status())


async def models(request: web.Request) -> web.Response:
    return _json({"models": _fed(request).models()})


async def runs(request: web.Request) -> web.Response:
    return _json({"runs": _fed(request).store.runs()})


async def run_details(request: web.Request) -> web.Response:
    """Any stored run, current or past: its row, its rounds, and a page of its per-node
    metrics and of its nodes' federated readings (by round, then node id;
    ``?limit=&offset=``, with ``nodes_total`` and ``evaluations_total``)."""
    run_id = request.match_info["run_id"]
    if not RUN_ID_RE.fullmatch(run_id):
        raise BadRequest(f"invalid run id {run_id[:80]!r}: must match {RUN_ID_RE.pattern}")
    limit = int_query(request, "limit", RUN_NODES_PAGE, 1, RUN_NODES_PAGE_MAX)
    offset = int_query(request, "offset", 0, 0, 2**31)
    store = _fed(request).store
    run = store.run(run_id)
    if run is None:
        raise NotFound(f"no run {run_id!r} on this orchestrator (GET /runs lists them)")
    nodes = [
        {k: row[k] for k in ("round", "node_id", "samples", "metrics", "received_at")}
        | {"name": row["node_name"]}
        for row in store.node_metrics(run_id, limit, offset)
    ]
    return _json(
        {
            "run": run,
            "rounds": run_history(store, run),
            "nodes": nodes,
            "nodes_total": store.node_metrics_count(run_id),
            # Own data: each node's reading of each round's model (0: the initial one).
            "evaluations": store.node_evaluation_rows(run_id, limit, offset),
            "evaluations_total": store.node_evaluations_count(run_id),
            "offset": offset,
            "limit": limit,
        }
    )


async def download_model(request: web.Request) -> web.StreamResponse:
    fed = _fed(request)
    name = request.match_info["name"]
    try:
        path = fed.model_path(name)
        size = path.stat().st_size
    except OSError as exc:  # a name longer than the file system allows is no model either
        if exc.errno != errno.ENAMETOOLONG:
            raise
        raise NotFound(f"no model named {name[:80]!r}...") from None
    fed.metrics.bytes_sent.labels(kind="model").inc(size)
    return web.FileResponse(
        path,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{path.name}"',
        },
    )


async def prometheus_metrics(request: web.Request) -> web.Response:
    fed = _fed(request)
    body = fed.metrics.render(
        nodes_connected=len(fed.registry.connected()), dashboard_clients=fed.bus.subscriber_count
    )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi_document(request: web.Request) -> web.Response:
    text = (resources.files("server") / "openapi.json").read_text()  # hand-kept, see tests
    return web.Response(text=text, content_type="application/json")


async def monitor_overview(request: web.Request) -> web.Response:
    return _json(monitor.overview(_fed(request)))


async def monitor_nodes(request: web.Request) -> web.Response:
    return _json(monitor.node_details(_fed(request)))


async def monitor_timeline(request: web.Request) -> web.Response:
    limit = int_query(request, "limit", 100, 1, 1000)
    return _json(monitor.timeline(_fed(request), limit))


@aiohttp_jinja2.template("dashboard.html")
async def dashboard(request: web.Request) -> dict[str, Any]:
    settings = request.app[SETTINGS]
    return {"version": __version__, "admin_token_required": settings.admin_token is not None}


async def _revalidate_static(request: web.Request, response: web.StreamResponse) -> None:
    """Browsers must re-check dashboard assets (cheap 304s), so an upgrade is never half-seen."""
    if request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-cache"


def static_dir() -> Path:
    """The dashboard assets: the checkout's ``static/``, or where the wheel installed them."""
    for candidate in (
        Path(__file__).resolve().parents[2] / "static",
        Path(sys.prefix) / "share" / "fedavg" / "static",
    ):
        if candidate.is_dir():
            return candidate
    raise RuntimeError("dashboard assets (static/) not found; reinstall fedavg")


# -- control (admin) ---------------------------------------------------------------------------


async def prepare_dataset(request: web.Request) -> web.Response:
    require_admin(request, request.app[SETTINGS])
    return await _prepared(_fed(request).shelf.prepare(request.match_info["dataset_id"]))


async def prepare_mnist(request: web.Request) -> web.Response:
    """The seed's route, kept as the name of ``POST /datasets/mnist/prepare``."""
    require_admin(request, request.app[SETTINGS])
    return await _prepared(_fed(request).shelf.prepare_mnist())


async def import_dataset(request: web.Request) -> web.Response:
    """The user's own data on the orchestrator's disk: 201 with the new dataset's info."""
    settings = request.app[SETTINGS]
    require_admin(request, settings)
    body = await read_json_object(request, settings.idle_timeout_s, IMPORT_BODY_MAX)
    job = _fed(request).job
    training_on = job.dataset.dataset_id if job and not job.finished.is_set() else None
    info = await _fed(request).shelf.import_(ImportRequest.from_body(body), training_on)
    return _json(info.to_dict(), status=201)


async def _prepared(preparing: Awaitable[DatasetInfo]) -> web.Response:
    """The info, or a 503 that keeps its message: the operator needs the fix it names (which
    files in which folder), where the middleware would answer any 5xx with "internal"."""
    try:
        info = await preparing
    except UnknownDataset:
        raise  # a 404, as everywhere
    except DatasetError as exc:
        log.warning("dataset_unavailable", error=str(exc))
        return _error(503, ErrorCode.UNAVAILABLE, str(exc))
    return _json(info.to_dict())


async def prepare_shards(request: web.Request) -> web.Response:
    """A shard plan without training; 409 while a job runs, whose nodes train theirs."""
    require_admin(request, request.app[SETTINGS])
    fed = _fed(request)
    if fed.job is not None and not fed.job.finished.is_set():
        raise Conflict(
            f"job {fed.job.job_id} is running: shards cannot be planned while it trains; "
            "stop it first (POST /jobs/stop) or wait until it ends"
        )
    try:
        partition = parse_partition(request.query.get("partition", str(fed.settings.partition)))
    except PartitionError as exc:
        raise BadRequest(str(exc)) from exc
    info, files, key = await plan_shards(fed, request.match_info["dataset_id"], partition)
    shards = [
        {
            "node_id": n,
            "name": fed.registry.nodes[n].name,
            "samples": f.samples,
            "own": f.own,
            "sha256": f.sha256,
            "labels": list(f.labels),
        }
        for n, f in files.items()
    ]
    return _json(
        {"dataset": info.dataset_id, "plan": key, "partition": str(partition), "shards": shards}
    )


async def start_training(request: web.Request) -> web.Response:
    """The seed's call (``?epochs=`` counts federated rounds) plus ``&model=`` and an optional
    JSON body: ``{"rounds", "model": arch or spec, "train": {optimizer, lr, ...}}``."""
    settings = request.app[SETTINGS]
    require_admin(request, settings)
    body = await read_json_object(request, settings.idle_timeout_s)
    job = await _fed(request).start_job(request.match_info["dataset_id"], request.query, body)
    return _json(
        {
            "job_id": job.job_id,
            "rounds": job.rounds,
            "nodes": len(job.shards),
            "model": job.spec.to_dict(),
            "train": train_view(job.config),
            "partition": job.partition,
            "aggregation": job.ctx.aggregation,
            "server_opt": dict(job.ctx.server_opt),
            "sampling": job.ctx.sampling.view(),
            "data_mode": job.source.mode,
            "left_out": [
                {"node_id": n, "name": job.participants.names_of([n])[0], "why": why}
                for n, why in sorted(job.source.left_out.items())
            ],
            "status_url": "/sync/status",
        },
        status=202,
    )


async def evaluate_model(request: web.Request) -> web.Response:
    """An evaluation-only run: every connected node holding ``dataset_id`` evaluates the
    saved ``?model=`` on its own test split; the per-node table and the weighted mean."""
    require_admin(request, request.app[SETTINGS])
    model = request.query.get("model")
    if not model or len(model) > MAX_MODEL_NAME:
        raise BadRequest(
            f"model is required: the file name of a saved model (GET /models), "
            f"at most {MAX_MODEL_NAME} characters"
        )
    result = await evaluate_saved_model(_fed(request), request.match_info["dataset_id"], model)
    return _json(result)


async def stop_training(request: web.Request) -> web.Response:
    require_admin(request, request.app[SETTINGS])
    job = await _fed(request).stop_job()
    return _json({"job_id": job.job_id, "state": job.status})


# -- bulk transfer -----------------------------------------------------------------------------


async def download_weights(request: web.Request) -> web.StreamResponse:
    _fed(request).metrics.file_requests.labels(kind="weights").inc()
    job = _fed(request).job_by_id(request.query.get("job"))
    latest = max(job.checkpoints)
    round_ = int_query(request, "round", latest, 0, job.rounds)
    checkpoint = job.checkpoints.get(round_)
    if checkpoint is None:
        raise NotFound(f"round {round_} has no weights yet (latest: {latest})")
    return await bytes_with_etag(
        request, lambda: job.checkpoint_bytes(round_), checkpoint.sha256, "weights"
    )


async def download_shard(request: web.Request) -> web.StreamResponse:
    fed = _fed(request)
    fed.metrics.file_requests.labels(kind="shard").inc()  # before any refusal: every hit
    session = node_session(request, fed.registry)
    path, sha256 = fed.shard_file(
        session, request.match_info["run_id"], request.match_info["node_id"]
    )
    return await bytes_with_etag(
        request, lambda: asyncio.to_thread(path.read_bytes), sha256, "shard"
    )


async def upload_weights(request: web.Request) -> web.Response:
    fed = _fed(request)
    settings = fed.settings
    try:
        session = node_session(request, fed.registry)
        job = fed.job_by_id(request.query.get("job"))
        try:
            query = UploadQuery.decode(request.query)
        except ProtocolError as exc:  # a bad value in the query, like any other request's
            raise BadRequest(str(exc)) from None
        structlog.contextvars.bind_contextvars(
            node_id=session.node_id, run_id=job.job_id, round=query.round
        )

        def read(into: bytearray, limit: int) -> Awaitable[memoryview]:
            return read_body(
                request, limit, settings.idle_timeout_s, into, min_rate=settings.min_upload_rate
            )

        result = await job.intake.receive(session.node_id, query, request.content_length, read)
    except FedavgError as exc:
        reason = exc.reason if isinstance(exc, ApiError) else type(exc).__name__
        fed.metrics.uploads_rejected.labels(reason=reason).inc()
        raise
    return _json(result)
