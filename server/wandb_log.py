"""The server's W&B logging: global metrics per round, one W&B run per job (group = run id).

In a job over the nodes' own data, the nodes' readings of each round's model go to that
round's step too: ``federated/*`` (their weighted mean so far) and ``nodes/<name>/*``.
W&B keeps only steps that never go back, so a reading that arrives after a later round's
step was logged (a straggler's) is not sent: ``/sync/status`` and SQLite still hold it.
"""

from __future__ import annotations

from typing import Any

from node.shared.wandb_sink import WandbSink
from server.events import Event

# Per-node keys are bounded like the Prometheus series: the first NODE_KEYS_MAX node names of
# a run get their own keys; the others count only in the weighted mean.
NODE_KEYS_MAX = 64


class ServerWandb:
    def __init__(self, sink: WandbSink) -> None:
        self.sink = sink
        self._run_id: str | None = None  # the job whose W&B run is open
        self._step = 0  # the newest step logged in this run
        self._node_names: set[str] = set()  # the names with keys of their own in this run

    def on_event(self, event: Event) -> None:
        data = event.data
        if event.kind == "job_started" and event.run_id:
            self._run_id, self._step = event.run_id, 0
            self._node_names.clear()
            self.sink.start(group=event.run_id, name="server", job_type="server", config=data)
        elif event.kind == "round_closed":
            values = {
                "global/test_accuracy": data["test_accuracy"],
                "global/test_loss": data["test_loss"],
                "round/seconds": data["seconds"],
                "round/contributors": len(data["contributors"]),
                "round/partial": float(data["partial"]),
                "round": data["round"],
                **federated_values(data.get("federated")),
            }
            self._log(values, data["round"])
        elif (
            event.kind == "node_evaluated"
            and event.run_id == self._run_id  # not an evaluation-only job's
            and data["round"] >= self._step
        ):
            values = federated_values(data["federated"])
            if data["name"] in self._node_names or len(self._node_names) < NODE_KEYS_MAX:
                self._node_names.add(data["name"])
                values[f"nodes/{data['name']}/test_accuracy"] = data["accuracy"]
                values[f"nodes/{data['name']}/test_loss"] = data["loss"]
            self._log(values, data["round"])
        elif event.kind in ("job_done", "job_failed", "job_stopped"):
            self.sink.finish()

    def _log(self, values: dict[str, float | None], step: int) -> None:
        """Log the figures there are (a null is no figure: no server test set, say) at
        ``step``, unless a later step has been logged already."""
        if step < self._step:
            return
        self._step = step
        self.sink.log({k: v for k, v in values.items() if v is not None}, step=step)


def federated_values(summary: dict[str, Any] | None) -> dict[str, float | None]:
    """A round's federated summary as W&B keys; none when the nodes have not reported."""
    if summary is None:
        return {}
    return {
        "federated/accuracy": summary["accuracy"],
        "federated/loss": summary["loss"],
        "federated/samples": summary["samples"],
        "federated/nodes": summary["nodes"],
    }
