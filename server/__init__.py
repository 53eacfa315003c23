"""The fedavg orchestrator: the service layer here, with ``core``, ``job``, ``web`` and ``demo``."""
