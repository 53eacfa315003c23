"""What every part of fedavg shares: model specs, the wire protocol, weights, shards, paths.

Nothing here imports the worker, the server or the showcase.
"""

__version__ = "0.1.0"
