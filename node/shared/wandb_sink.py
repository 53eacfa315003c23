"""Weights & Biases, kept at arm's length: every call runs in one background thread, and a
failing, absent or offline W&B never touches training. Used by both server and nodes."""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal, cast

import structlog

log = structlog.get_logger(__name__)


def wandb_mode(env: Mapping[str, str]) -> str | None:
    """``online``/``offline`` when the user asked for W&B (API key or WANDB_MODE), else None."""
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode in ("disabled", "dryrun-disabled"):
        return None
    if mode in ("offline", "dryrun"):
        return "offline"
    if mode in ("online", "run", "shared") or env.get("WANDB_API_KEY"):
        return "online"
    return None


class WandbSink:
    """One W&B run at a time (per job), fed from the event loop without ever blocking it."""

    def __init__(self, mode: str | None, project: str, folder: Path) -> None:
        self.mode = mode
        self.project = project
        self.folder = folder
        self._run: Any = None
        self._broken = False
        self._pool = (
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="wandb")
            if mode
            else None
        )

    @property
    def enabled(self) -> bool:
        return self._pool is not None and not self._broken

    def start(self, *, group: str, name: str, job_type: str, config: Mapping[str, Any]) -> None:
        self._submit(self._start, group, name, job_type, dict(config))

    def log(self, values: Mapping[str, float], step: int) -> None:
        self._submit(self._log, dict(values), step)

    def finish(self) -> None:
        self._submit(self._finish)

    def close(self, wait: bool = True) -> None:
        """Finish any open run and stop the worker thread."""
        if self._pool is not None:
            self.finish()
            self._pool.shutdown(wait=wait)

    def _submit(self, fn: Callable[..., None], *args: Any) -> None:
        if self.enabled:
            assert self._pool is not None
            self._pool.submit(self._guarded, fn, *args)

    def _guarded(self, fn: Callable[..., None], *args: Any) -> None:
        if self._broken:
            return
        try:
            fn(*args)
        except Exception:  # W&B must never break training: log once, then stay out of the way
            log.exception("wandb_failed_disabling", call=fn.__name__)
            self._broken = True

    def _start(self, group: str, name: str, job_type: str, config: dict[str, Any]) -> None:
        import wandb  # imported on first use: it is slow to import and often unused

        self._finish()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=self.project,
            group=group,
            name=name,
            job_type=job_type,
            config=config,
            dir=str(self.folder),
            mode=cast(Literal["online", "offline"], self.mode),
            reinit="create_new",
            settings=wandb.Settings(silent=True, console="off"),
        )
        log.info("wandb_run_started", group=group, name=name, mode=self.mode)

    def _log(self, values: dict[str, float], step: int) -> None:
        if self._run is not None:
            self._run.log(values, step=step)

    def _finish(self) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            run.finish()
