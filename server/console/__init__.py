"""The ``fedavg`` command: drive an orchestrator over its public REST and WebSocket API."""
