"""Virtual nodes: N logical nodes in one process (``--virtual N``), each a whole node.

They share the process's torch runtime and nothing the orchestrator can see: each has its
own identity and secret (``<id>-v000``, ``<name>-v000``, each in its own file under the
cache dir, so a restarted process comes back as the same N nodes), its own agent, session,
WebSocket and shard, over the unchanged protocol. Every trust rule applies to each.

At most ``--virtual-workers`` K rounds (weights in, training, weights out) run at once
across the process: one semaphore, shared by the agents' pipelines. A virtual node drops
its weights buffer after each round, so an idle one holds its shard and no weights.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from node.agent import Agent
from node.identity import Identity, IdentityError, load_or_create
from node.settings import NodeSettings

MAX_ID = 128  # characters, as NodeSettings and the server's hello allow


def virtual_names(base: str, count: int) -> list[str]:
    """``base-v000``, ``base-v001``, ...: an id or a display name per virtual node."""
    return [f"{base}-v{i:03d}" for i in range(count)]


@dataclass(frozen=True, slots=True)
class VirtualNode:
    identity: Identity
    name: str


def virtual_nodes(settings: NodeSettings, base_id: str) -> list[VirtualNode]:
    """The ``settings.virtual`` nodes of a process whose own id is ``base_id``: each
    identity kept in its own file under the cache dir (node/identity.py), created on the
    first start and read back on every later one, so a restart brings back the same ids."""
    ids = virtual_names(base_id, settings.virtual)
    names = virtual_names(settings.name, settings.virtual)
    if max(len(ids[-1]), len(names[-1])) > MAX_ID:
        raise IdentityError(
            f"virtual node ids and names ({ids[-1]!r}, {names[-1]!r}) must be "
            f"at most {MAX_ID} characters: start with a shorter --node-id or --name"
        )
    return [
        VirtualNode(load_or_create(settings.cache_dir, node_id, generated_id=node_id), name)
        for node_id, name in zip(ids, names, strict=True)
    ]


def virtual_agents(
    settings: NodeSettings, nodes: Sequence[VirtualNode], capacity: float, device: torch.device
) -> list[Agent]:
    """One agent per virtual node, sharing one pool of ``settings.virtual_workers`` slots.

    Each announces the process's measured ``capacity`` undivided: each logical node is a
    node, and when it trains it has the device to itself (the pool runs a few at a time),
    so the measured value is its speed. Dividing by N would plan it a smaller shard than
    it trains in the same time, and the server bounds every claim anyway.
    """
    slots = asyncio.Semaphore(settings.virtual_workers)
    return [
        Agent(
            dataclasses.replace(
                settings, node_id=node.identity.node_id, name=node.name, explicit_node_id=True
            ),
            capacity,
            device,
            secret=node.identity.secret,
            round_slots=slots,
            keep_weights_buffer=False,
        )
        for node in nodes
    ]


async def run_agents(agents: Sequence[Agent]) -> None:
    """Run every agent until all are done; SIGTERM or SIGINT stops them all, each leaving
    cleanly. One that fails (a refused join) stops the others, then its error is raised."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, _stop_all, agents)
    tasks = [asyncio.create_task(agent.run()) for agent in agents]
    try:
        await asyncio.gather(*tasks)
    finally:
        _stop_all(agents)
        await asyncio.gather(*tasks, return_exceptions=True)


def _stop_all(agents: Sequence[Agent]) -> None:
    for agent in agents:
        agent.stop()
