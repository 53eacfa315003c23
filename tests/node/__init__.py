"""Tests of the node: its agent's parts, trainer, transport, settings and identity."""
