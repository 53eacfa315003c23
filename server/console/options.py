"""The ``fedavg`` command's inputs turned into what the API takes: the orchestrator, the admin
token, a job's JSON body and a plot's size. Pure, except for reading the token file.

The token is read from the environment or a file and never taken as a flag: a flag's value
shows in ``ps`` to every user of the machine.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.console.errors import OptionError

DEFAULT_URL = "http://127.0.0.1:11999"
TOKEN_FILE_MAX_BYTES = 4096
PLOT_MAX_PIXELS = 8000  # either side of a plot
TRAIN_FLAGS = ("optimizer", "lr", "batch_size", "local_epochs", "max_batches", "proximal_mu")
SERVER_OPT_FLAGS = ("server_lr", "server_momentum", "beta1", "beta2", "tau")


def orchestrator_url(flag: str | None, env: Mapping[str, str]) -> str:
    """``--orchestrator``, else ``ORCHESTRATOR_URL`` (its first URL: nodes may list several),
    else the local default."""
    raw = flag or env.get("ORCHESTRATOR_URL", "").split(",")[0].strip() or DEFAULT_URL
    if not raw.startswith(("http://", "https://")):
        raise OptionError(f"--orchestrator: an http:// or https:// URL, got {raw[:80]!r}")
    return raw.rstrip("/")


def admin_token(token_file: Path | None, env: Mapping[str, str]) -> str | None:
    """The admin token from ``--token-file`` (its first line), else ``FEDAVG_ADMIN_TOKEN``."""
    if token_file is None:
        return env.get("FEDAVG_ADMIN_TOKEN") or None
    try:
        with token_file.open("rb") as f:
            data = f.read(TOKEN_FILE_MAX_BYTES + 1)
    except OSError as exc:
        raise OptionError(f"--token-file: cannot read {token_file}: {exc.strerror}") from None
    if len(data) > TOKEN_FILE_MAX_BYTES:
        raise OptionError(f"--token-file: {token_file} is over {TOKEN_FILE_MAX_BYTES} bytes")
    lines = data.decode(errors="replace").strip().splitlines()
    if not lines or not lines[0].strip():
        raise OptionError(f"--token-file: {token_file} is empty")
    return lines[0].strip()


def model_choice(text: str | None) -> str | dict[str, Any] | None:
    """``--model``: an arch name (``cnn``) or a whole spec as a JSON object."""
    if text is None or not text.lstrip().startswith("{"):
        return text
    try:
        spec = json.loads(text)
    except ValueError as exc:
        raise OptionError(f"--model: not valid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise OptionError("--model: an arch name or a JSON object")
    return spec


def job_body(rounds: int | None, options: Mapping[str, Any]) -> dict[str, Any]:
    """The ``POST /train/{dataset}`` body for the flags given; the server checks every field
    and falls back to its own settings for those left out."""
    body: dict[str, Any] = {}
    if rounds is not None:
        body["rounds"] = rounds
    model = model_choice(options.get("model"))
    if model is not None:
        body["model"] = model
    for name in ("partition", "aggregation", "strategy", *SERVER_OPT_FLAGS):
        if options.get(name) is not None:
            body[name] = options[name]
    train = {name: options[name] for name in TRAIN_FLAGS if options.get(name) is not None}
    if train:
        body["train"] = train
    return body


def plot_size(text: str) -> tuple[int, int]:
    """``--size 1200x800``: width and height in pixels."""
    width, sep, height = text.lower().partition("x")
    try:
        size = (int(width), int(height))
    except ValueError:
        size = (0, 0)
    if not sep or not all(100 <= side <= PLOT_MAX_PIXELS for side in size):
        raise OptionError(f"--size: WIDTHxHEIGHT in pixels, 100..{PLOT_MAX_PIXELS}, got {text!r}")
    return size
