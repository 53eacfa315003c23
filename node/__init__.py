"""The fedavg worker node: its socket to the orchestrator, round pipeline and trainer.

``node.shared`` is the layer every part of fedavg imports (the server and showcase too);
the rest of this package is the worker's alone.
"""
