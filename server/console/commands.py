"""What each ``fedavg`` subcommand does: API calls in, tables or JSON out, an exit code back.

Every handler takes the open ``Orchestrator``, the parsed arguments and the ``Output``; the
argument parser and the error handling around them are in ``server.console.main``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from rich.console import Console, Group, RenderableType
from rich.progress import Progress

from node.shared.atomic import atomic_write_bytes
from server.console import views
from server.console.client import Orchestrator
from server.console.errors import EXIT_JOB, EXIT_OK, ConsoleError, Refused
from server.console.follow import follow, print_line, receive_snapshot
from server.console.options import job_body, plot_size
from server.console.results import csv_text, plot_png, run_record

NODES_PAGE = 5000  # the server's largest page
# The server answers an evaluation once every node has, within its round deadline
# (EPOCH_SYNC_TIMEOUT, 120 s by default): wait far longer than any deadline set for it.
EVALUATE_READ_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class Output:
    """Where results go: rich tables on ``console``, or JSON when ``as_json``."""

    console: Console
    as_json: bool = False

    def show(self, data: Any, view: Callable[[], RenderableType]) -> None:
        if self.as_json:
            sys.stdout.write(json.dumps(data, indent=2) + "\n")
        else:  # a line is printed as it is: a server's message may hold [brackets]
            self.console.print(view(), markup=False, highlight=False, soft_wrap=True)


Handler = Callable[[Orchestrator, argparse.Namespace, Output], Awaitable[int]]


async def status(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    state = await api.get("/sync/status")
    nodes = (await api.get("/nodes", {"limit": str(NODES_PAGE)}))["nodes"]
    out.show(
        {"status": state, "nodes": nodes},
        lambda: Group(views.status_view(state), views.nodes_table(nodes)),
    )
    return EXIT_OK


async def nodes(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    page = await api.get("/nodes", {"limit": str(NODES_PAGE)})
    out.show(page, lambda: views.nodes_table(page["nodes"]))
    return EXIT_OK


async def datasets(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    answer = await api.get("/datasets")
    out.show(answer, lambda: views.datasets_table(answer))
    return EXIT_OK


async def models(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    answer = await api.get("/models")
    out.show(answer, lambda: views.models_table(answer["models"]))
    return EXIT_OK


async def runs(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    answer = await api.get("/runs")
    out.show(answer, lambda: views.runs_table(answer["runs"]))
    return EXIT_OK


async def prepare(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    """Prepare a dataset, with a bar fed by the server's ``dataset_progress`` events."""
    dataset_id = args.dataset
    async with api.events() as ws:
        await receive_snapshot(ws)
        live = out.console.is_terminal and not out.as_json
        with Progress(console=out.console, transient=True, disable=not live) as bar:
            task = bar.add_task(f"preparing {dataset_id}", total=None)
            reader = asyncio.create_task(_prepare_progress(ws, dataset_id, bar, task))
            try:
                info = await api.post(f"/datasets/{dataset_id}/prepare")
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
    out.show(
        info,
        lambda: (
            f"{info['dataset_id']} ready: {info['train_samples']} train / "
            f"{info['test_samples']} test samples from {info['source']}"
        ),
    )
    return EXIT_OK


async def _prepare_progress(
    ws: aiohttp.ClientWebSocketResponse, dataset_id: str, bar: Progress, task: Any
) -> None:
    async for msg in ws:
        if msg.type is not aiohttp.WSMsgType.TEXT:
            continue
        event = json.loads(msg.data)
        data = event.get("data") or {}
        if event.get("kind") == "dataset_progress" and data.get("dataset") == dataset_id:
            total = data.get("total") or None
            bar.update(
                task,
                completed=data.get("done", 0),
                total=total,
                description=f"{dataset_id}: {data.get('stage')}",
            )


async def train(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    """Start a job, then follow it to its end (``--detach``: start it and return)."""
    body = job_body(args.rounds, vars(args))
    query = {"mode": args.mode} if args.mode else None
    async with api.events() as ws:
        snapshot = await receive_snapshot(ws)  # before the start: no event can be missed
        started = await api.post(f"/train/{quote(args.dataset, safe='')}", body, query)
        if args.detach:
            out.show(started, lambda: views.started_line(started))
            return EXIT_OK
        if not out.as_json:
            print_line(out.console, views.started_line(started) + "\n")
        board = views.NodeBoard(started["job_id"], started["rounds"], started.get("data_mode"))
        board.seed(snapshot.get("nodes", []))
        return await _follow_to_end(api, ws, board, out)


async def evaluate(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    """A saved model evaluated by every node holding the data, on its own test split."""
    answer = await api.post(
        f"/evaluate/{quote(args.dataset, safe='')}",
        query={"model": args.model},
        read_timeout_s=EVALUATE_READ_TIMEOUT_S,
    )
    out.show(answer, lambda: views.evaluation_view(answer))
    return EXIT_OK


async def watch(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    """Follow the running job; one that has ended is reported, with its exit code."""
    async with api.events() as ws:
        snapshot = await receive_snapshot(ws)
        state = snapshot["status"]
        if state.get("run_id") is None:
            raise Refused(409, "no job has run on this orchestrator yet")
        if state.get("state") not in ("running", "starting"):
            out.show(state, lambda: views.job_summary(state))
            return EXIT_OK if state.get("state") == "completed" else EXIT_JOB
        board = views.NodeBoard(state["run_id"], state.get("rounds", 0), state.get("data_mode"))
        board.seed(snapshot.get("nodes", []))
        board.round = int(state.get("round", 0))
        return await _follow_to_end(api, ws, board, out, state.get("history", []))


async def _follow_to_end(
    api: Orchestrator,
    ws: aiohttp.ClientWebSocketResponse,
    board: views.NodeBoard,
    out: Output,
    closed: list[dict[str, Any]] | None = None,
) -> int:
    shown = Console(quiet=True) if out.as_json else out.console  # JSON: only the end's status
    ended = await follow(ws, board, shown, closed or [])
    if out.as_json:
        out.show(await api.get("/sync/status"), lambda: "")
    else:
        out.console.print()
        print_line(out.console, views.job_summary(ended))
    return EXIT_OK if ended["state"] == "completed" else EXIT_JOB


async def stop(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    answer = await api.post("/jobs/stop")
    out.show(answer, lambda: f"job {answer['job_id']} {answer['state']}")
    return EXIT_OK


async def _record(api: Orchestrator, run_id: str | None) -> dict[str, Any]:
    """``run_id``'s record (None: the orchestrator's current or last run), every page of its
    per-node rows fetched."""
    if run_id is None:
        run_id = (await api.get("/sync/status")).get("run_id")
        if run_id is None:
            raise Refused(404, "no run has happened on this orchestrator yet")
    path = f"/runs/{quote(run_id, safe='')}"
    first = await api.get(path)
    rows, readings = list(first["nodes"]), list(first.get("evaluations", []))
    # One offset pages both lists: per-node metrics and the nodes' readings (own data).
    total = max(first["nodes_total"], first.get("evaluations_total", 0))
    offset = page_size = int(first["limit"])
    while offset < total:
        page = await api.get(path, {"offset": str(offset)})
        if not page["nodes"] and not page.get("evaluations"):
            break  # the run's rows changed under us: what was read is what we have
        rows += page["nodes"]
        readings += page.get("evaluations", [])
        offset += page_size
    return run_record(first, rows, readings)


async def export(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    record = await _record(api, args.run)
    text = csv_text(record) if args.format == "csv" else json.dumps(record, indent=2) + "\n"
    if args.output is None or str(args.output) == "-":
        sys.stdout.write(text)
    else:
        atomic_write_bytes(args.output, text.encode())
        out.console.print(
            f"wrote {args.output} ({len(record['rounds'])} rounds, "
            f"{len(record['nodes'])} node rows of run {record['run']['run_id']})"
        )
    return EXIT_OK


async def plot(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    width, height = plot_size(args.size)
    record = await _record(api, args.run)
    if not record["rounds"]:
        raise Refused(409, f"run {record['run']['run_id']} has no closed round to plot yet")
    png = await asyncio.to_thread(plot_png, record, width, height)
    atomic_write_bytes(args.output, png)
    out.console.print(f"wrote {args.output} ({width}x{height}, run {record['run']['run_id']})")
    return EXIT_OK


async def download(api: Orchestrator, args: argparse.Namespace, out: Output) -> int:
    """Save a model (the newest without a name), checked against its listed sha256."""
    listed = (await api.get("/models"))["models"]
    if not listed:
        raise Refused(404, "no model is saved yet: train one with `fedavg train mnist`")
    name = args.model or listed[0]["name"]
    data = await api.download(f"/models/{name}")
    expected = next((m["sha256"] for m in listed if m["name"] == name), None)
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise ConsoleError(f"{name}: the download's sha256 {digest} is not the listed {expected}")
    dest = await asyncio.to_thread(_save_model, args.output, name, data)
    out.show(
        {"name": name, "path": str(dest), "size": len(data), "sha256": digest},
        lambda: f"saved {name} ({len(data)} bytes, sha256 {digest[:12]}...) to {dest}",
    )
    return EXIT_OK


def _save_model(output: Path | None, name: str, data: bytes) -> Path:
    dest = output or Path(name)
    if dest.is_dir():
        dest = dest / name
    atomic_write_bytes(dest, data)
    return dest
