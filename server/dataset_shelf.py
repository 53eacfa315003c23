"""The datasets a federation can train on: prepared from the catalogue, imported, listed.

The service layer over :mod:`server.datasets`: one lock, so two preparations or imports of
the same files never race; the work in a thread, its progress on the event bus
(``dataset_progress``, a few a second at most, off the timeline) and in the log; and
``dataset_prepared`` when it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Final

import structlog

from node.shared.local_data import DataLimits
from server.datasets import (
    CATALOG,
    MNIST_ID,
    DatasetError,
    DatasetInfo,
    ImportRequest,
    Throttled,
    dataset_info,
    import_dataset,
    list_datasets,
    prepare_dataset,
)
from server.errors import Conflict, NotFound
from server.events import EventBus
from server.settings import Settings

log = structlog.get_logger(__name__)

PROGRESS_INTERVAL_S: Final = 0.25  # dataset_progress events: at most four a second per stage


class DatasetShelf:
    def __init__(self, settings: Settings, bus: EventBus) -> None:
        self.settings = settings
        self.bus = bus
        self._lock = asyncio.Lock()

    async def prepare(self, dataset_id: str) -> DatasetInfo:
        """A catalogue entry from its first source that works (see ``server.datasets``)."""
        work = partial(
            prepare_dataset,
            self.settings.datasets_path,
            dataset_id,
            allow_download=self.settings.mnist_download,
        )
        return await self._run(dataset_id, work)

    async def prepare_mnist(self) -> DatasetInfo:  # the seed's name
        return await self.prepare(MNIST_ID)

    async def import_(self, request: ImportRequest, training_on: str | None) -> DatasetInfo:
        """The user's own data as a dataset, under the settings' roots and limits; 409 when
        ``training_on`` (the running job's dataset) is the id it would replace."""
        if training_on == request.dataset_id:
            raise Conflict(
                f"dataset_id: a job is training on {training_on!r}; stop it before "
                "replacing its dataset"
            )
        settings = self.settings
        limits = DataLimits(
            max_bytes=settings.import_max_bytes,
            max_samples=settings.import_max_samples,
            bytes_setting="FEDAVG_IMPORT_MAX_MB",
            samples_setting="FEDAVG_IMPORT_MAX_SAMPLES",
        )
        work = partial(
            import_dataset, settings.datasets_path, request, settings.import_root_paths, limits
        )
        return await self._run(request.dataset_id, work)

    def listed(self) -> list[DatasetInfo]:
        return list_datasets(self.settings.datasets_path)

    def get(self, dataset_id: str) -> DatasetInfo:
        """A prepared dataset's info; 404 saying how to prepare it when it is not."""
        try:
            info = dataset_info(self.settings.datasets_path, dataset_id)
        except DatasetError as exc:
            raise NotFound(str(exc)) from exc
        if info is None:
            raise NotFound(_not_prepared(dataset_id))
        return info

    async def _run(self, dataset_id: str, work: Callable[..., DatasetInfo]) -> DatasetInfo:
        async with self._lock:
            info = await _in_thread(self.bus, dataset_id, work)
        self.bus.publish("dataset_prepared", info.to_dict())
        return info


def _in_thread(
    bus: EventBus, dataset_id: str, work: Callable[..., DatasetInfo]
) -> Awaitable[DatasetInfo]:
    """Run ``work(progress=...)`` in a thread, its progress reaching the bus and the log
    through the event loop."""
    loop = asyncio.get_running_loop()

    def publish(stage: str, done: int, total: int) -> None:  # called in the worker thread
        data = {"dataset": dataset_id, "stage": stage, "done": done, "total": total}
        log.info("dataset_progress", **data)
        if not loop.is_closed():  # closed: the server is shutting down, nobody is listening
            loop.call_soon_threadsafe(
                partial(bus.publish, "dataset_progress", data, timeline=False)
            )

    return asyncio.to_thread(work, progress=Throttled(publish, PROGRESS_INTERVAL_S))


def _not_prepared(dataset_id: str) -> str:
    """What to do about a dataset that is not on disk: prepare it when the catalogue knows
    it, else it is unknown (a typo, or data not imported yet)."""
    if dataset_id == MNIST_ID:
        return (
            f"dataset {dataset_id!r} is not prepared: POST /datasets/mnist/prepare, or the "
            "seed's /datasets/prepare-mnist, first"
        )
    if dataset_id in CATALOG:
        return f"dataset {dataset_id!r} is not prepared: POST /datasets/{dataset_id}/prepare first"
    return (
        f"unknown dataset {dataset_id[:80]!r}: the catalogue has {', '.join(CATALOG)} "
        "(POST /datasets/<name>/prepare), and your own data comes in with "
        "POST /datasets/import; GET /datasets lists what is prepared"
    )
