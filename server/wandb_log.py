"""The server's W&B logging: global metrics per round, one W&B run per job (group = run id)."""

from __future__ import annotations

from node.shared.wandb_sink import WandbSink
from server.events import Event


class ServerWandb:
    def __init__(self, sink: WandbSink) -> None:
        self.sink = sink

    def on_event(self, event: Event) -> None:
        data = event.data
        if event.kind == "job_started" and event.run_id:
            self.sink.start(group=event.run_id, name="server", job_type="server", config=data)
        elif event.kind == "round_closed":
            self.sink.log(
                {
                    "global/test_accuracy": data["test_accuracy"],
                    "global/test_loss": data["test_loss"],
                    "round/seconds": data["seconds"],
                    "round/contributors": len(data["contributors"]),
                    "round/partial": float(data["partial"]),
                    "round": data["round"],
                },
                step=data["round"],
            )
        elif event.kind in ("job_done", "job_failed", "job_stopped"):
            self.sink.finish()
