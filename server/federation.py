"""The orchestrator's service layer: what REST and WebSocket handlers call.

It owns the node registry, datasets, the current job and the event bus; handlers only
decode requests and encode answers. Saved models are listed by ``server.catalog``, and jobs
are rebuilt after a restart by ``server.job.restore``.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog

from node.shared import __version__
from node.shared.errors import FedavgError
from node.shared.protocol import Error, Evaluation, Hello, Progress, Welcome
from node.shared.wandb_sink import WandbSink
from server.catalog import ModelCatalog
from server.core.sampling import EVERYONE, Sampling
from server.dataset_shelf import DatasetShelf
from server.errors import Conflict, IdTaken, NotFound
from server.events import EventBus
from server.job.evaluations import JobEvaluations
from server.job.job import DataSource, Job, JobContext, background_executor
from server.job.restore import finished_view, remove_stale_temp_files, restore_job
from server.job_data import job_data
from server.metrics import Metrics
from server.registry import NodeRegistry, NodeSession
from server.settings import Settings
from server.store import Store
from server.wandb_log import ServerWandb

log = structlog.get_logger(__name__)


class Federation:
    def __init__(
        self, settings: Settings, store: Store, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.bus = EventBus(store, clock)
        self.metrics = Metrics()
        self.bus.listen(self.metrics.on_event)
        self.wandb = WandbSink(settings.wandb_mode, settings.wandb_project, settings.home / "wandb")
        self.bus.listen(ServerWandb(self.wandb).on_event)
        self.registry = NodeRegistry(settings.max_offline_nodes)
        self.background = background_executor()
        self.job: Job | None = None
        self.evaluation: JobEvaluations | None = None  # an evaluation-only run, while it runs
        self._last_run: dict[str, Any] | None = None  # the last job, when it ended before a restart
        self.shelf = DatasetShelf(settings, self.bus)
        self._job_lock = asyncio.Lock()
        self.started_at = clock()
        self.catalog = ModelCatalog(settings.models_path)

    # -- nodes ---------------------------------------------------------------------------------

    def node_joined(self, hello: Hello) -> NodeSession:
        """Admit a node, or raise IdTaken when its id is bound to another secret.

        The id -> secret binding is what makes an id worth nothing to anyone else: ids are
        public (``GET /nodes``), and the first secret seen for an id owns it from then on,
        across server restarts. A refused hello leaves the live session alone.
        """
        digest = hashlib.sha256(hello.secret.encode()).hexdigest()
        bound = self.store.node_secret_sha256(hello.node_id)
        if bound is not None and not secrets.compare_digest(bound, digest):
            self.metrics.hellos_refused.labels(reason="id_taken").inc()
            log.warning("node_id_taken", claimed_id=hello.node_id, name=hello.name)
            raise IdTaken(f"node id {hello.node_id!r} belongs to another node (wrong secret)")
        self.store.bind_node_id(hello.node_id, digest, self.clock(), keep=self._ids_in_use)
        session, replaced = self.registry.join(hello, self.clock())
        if replaced is not None:
            replaced.send(
                Error(code="replaced", message="a newer connection of this node took over")
            )
            replaced.close()
        session.send(
            Welcome(
                node_id=session.node_id,
                session_token=session.session_token,
                server_version=__version__,
            )
        )
        self.bus.publish("node_joined", session.view(), node_id=session.node_id)
        if self.job is not None:
            self.job.node_rejoined(session.node_id)
        return session

    def node_left(self, session: NodeSession, reason: str) -> None:
        if self.registry.leave(session):
            self.bus.publish(
                "node_left", {"name": session.name, "reason": reason}, node_id=session.node_id
            )
            self.registry.prune_offline(keep=self._participants())
            if self.job is not None:
                self.job.node_gone(session.node_id)
            if self.evaluation is not None:
                self.evaluation.node_left()

    def _participants(self) -> Collection[str]:
        """The running job's shard holders: remembered even while offline."""
        job = self.job
        return job.shards.keys() if job is not None and not job.finished.is_set() else ()

    def _ids_in_use(self) -> set[str]:
        return {s.node_id for s in self.registry.connected()} | set(self._participants())

    def node_progress(self, session: NodeSession, progress: Progress) -> bool:
        """Apply a progress report to the node's row; False (dropped, counted) when it is not
        about the job and round the node is training."""
        job = self.job
        if job is None or job.finished.is_set() or progress.job_id != job.job_id:
            refusal: str | None = "wrong_job"
        else:
            refusal = session.progress_refusal(progress)
        if refusal is not None:
            self.metrics.frames_dropped.labels(reason=refusal).inc()
            return False
        data = session.show_progress(progress)
        self.bus.publish("progress", data, node_id=session.node_id, timeline=False)
        return True

    def node_evaluation(self, session: NodeSession, frame: Evaluation) -> bool:
        """A node's reading of a global model on its own test split: for the running job's
        federated evaluation, or an evaluation-only run's; False (dropped, counted) when
        neither counts it."""
        job = self.job
        refusal: str | None = "wrong_job"
        if job is not None and job.evaluations is not None and frame.job_id == job.job_id:
            refusal = job.evaluations.take(session.node_id, frame)
        elif self.evaluation is not None:
            refusal = self.evaluation.take(session.node_id, frame)
        if refusal is not None:
            self.metrics.frames_dropped.labels(reason=f"evaluation_{refusal}").inc()
            return False
        return True

    def nodes(self, limit: int = 500, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        """A page of the known nodes, connected ones first (in join order), then the offline
        ones, most recently gone first; and how many there are in all."""
        connected = self.registry.connected()
        offline = self.registry.offline_newest_first()
        page = (connected + offline)[offset : offset + limit]
        return [s.view() for s in page], len(connected) + len(offline)

    # -- datasets ------------------------------------------------------------------------------

    # -- jobs ----------------------------------------------------------------------------------

    async def start_job(
        self,
        dataset_id: str,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> Job:
        """Start a job on ``dataset_id``: its rounds, model and training settings are the
        request's (see :mod:`server.core.job_request`), else the server's settings."""
        async with self._job_lock:
            if self.job is not None and not self.job.finished.is_set():
                raise Conflict(
                    f"job {self.job.job_id} is still running (round {self.job.machine.round})"
                )
            data = await job_data(self, dataset_id, query or {}, body)
            request, files = data.request, data.files
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
            job = Job(
                self.job_context(request.aggregation, request.server_opt, request.sampling),
                job_id=f"{dataset_id}-{stamp}-{secrets.token_hex(2)}",
                dataset=data.info,
                shards=files,
                spec=request.spec,
                config=request.train,
                rounds=request.rounds,
                seed=self.settings.seed,
                test_split=data.test_split,
                names={n: self.registry.nodes[n].name for n in files},
                partition=str(request.partition) if data.mode == "shards" else "own",
                source=DataSource(data.mode, data.test_set, data.left_out),
            )
            self.job = job
            await job.start()
            return job

    def job_context(
        self,
        aggregation: str,
        server_opt: Mapping[str, Any] | None = None,
        sampling: Sampling = EVERYONE,
    ) -> JobContext:
        return JobContext(
            store=self.store,
            bus=self.bus,
            registry=self.registry,
            runs_dir=self.settings.runs_path,
            models_dir=self.settings.models_path,
            aggregation=aggregation,
            deadline_s=self.settings.round_deadline_s,
            metrics=self.metrics,
            background=self.background,
            upload_slots=self.settings.upload_slots,
            max_upload_bytes=self.settings.max_upload_bytes,
            max_update_ratio=self.settings.max_update_ratio,
            max_missed_rounds=self.settings.max_missed_rounds,
            server_opt=server_opt or {"strategy": "none"},
            best_metric=self.settings.best_metric,
            sampling=sampling,
            clock=self.clock,
        )

    async def resume_unfinished(self) -> None:
        """After a restart: carry on with the newest job that was running, from its last
        closed round; older unfinished runs are marked interrupted."""
        remove_stale_temp_files(self.settings.runs_path, self.settings.models_path)
        runs = self.store.runs()
        unfinished = [r for r in runs if r["status"] in ("running", "starting")]
        if not unfinished:
            if runs:  # the views show the last job, as they did before the restart
                self._last_run = finished_view(self.store, runs[0])
            return
        self.bus.publish(
            "server_restarted",
            {"unfinished_run": unfinished[0]["run_id"]},
            run_id=unfinished[0]["run_id"],
        )
        for old in unfinished[1:]:
            self.store.update_run(old["run_id"], status="interrupted", finished=self.clock())
        run = unfinished[0]
        try:
            local = run["config"].get("data_mode") == "local"
            job = restore_job(  # small reads at start-up, before anyone is served
                run,
                self.job_context(
                    run["aggregation"],
                    run["config"].get("server_opt"),
                    Sampling(**run["config"].get("sampling", EVERYONE.view())),
                ),
                None if local else self.shelf.get(run["dataset"]),
                self.settings.datasets_path,
            )
        except (FedavgError, OSError, KeyError, ValueError) as exc:
            log.exception("resume_failed", run_id=run["run_id"])
            self.store.update_run(
                run["run_id"],
                status="failed",
                finished=self.clock(),
                error=f"could not resume after a restart: {exc}",
            )
            self.bus.publish(
                "job_failed", {"status": "failed", "error": str(exc)}, run_id=run["run_id"]
            )
            self._last_run = finished_view(self.store, self.store.runs(limit=1)[0])
            return
        self.job = job
        await job.resume()

    async def stop_job(self) -> Job:
        if self.job is None or self.job.finished.is_set():
            raise Conflict("no job is running")
        await self.job.stop("stopped by the operator")
        return self.job

    def job_by_id(self, job_id: str | None) -> Job:
        if self.job is None or (job_id is not None and job_id != self.job.job_id):
            raise NotFound(
                f"no job {job_id!r} on this orchestrator" if job_id else "no job has run yet"
            )
        return self.job

    def shard_file(self, session: NodeSession, job_id: str, node_id: str) -> tuple[Path, str]:
        """The path and sha256 of the asking node's own shard in job ``job_id``."""
        job = self.job_by_id(job_id)
        shard = job.shards.get(node_id) if node_id == session.node_id else None
        if shard is None:
            raise NotFound("no such shard for this node")
        if shard.path is None:
            raise NotFound("this job trains on the node's own data: the server has no shard")
        return shard.path, shard.sha256

    def status(self) -> dict[str, Any]:
        nodes = self.registry.connected()
        base = {"nodes_connected": len(nodes), "server_started_at": self.started_at}
        if self.job is None and self._last_run is not None:
            return {**base, **self._last_run}
        if self.job is None:
            return {**base, "state": "idle", "round": 0, "rounds": 0, "run_id": None}
        return {**base, **self.job.view()}

    # -- models --------------------------------------------------------------------------------

    def models(self) -> list[dict[str, Any]]:
        return self.catalog.models()

    def model_path(self, name: str) -> Path:
        return self.catalog.model_path(name)

    async def close(self) -> None:
        """Before the store closes: the job's timers and writes end first (a restart
        resumes it), then the evaluation thread and W&B."""
        if self.job is not None:
            if not self.job.finished.is_set():
                self.job.status = "interrupted"
            await self.job.shutdown()
        self.background.shutdown(wait=True, cancel_futures=True)
        await asyncio.to_thread(self.wandb.close)
