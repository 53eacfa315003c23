"""Tests of the modules nodes and server share: protocol, weights, model, logs, paths."""
