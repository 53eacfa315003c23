"""fedavg worker node, and the layer every part shares: model specs, wire protocol, weights."""

__version__ = "0.1.0"
