"""The ``fedavg`` command's inputs: the orchestrator URL, the admin token, a job's body, a size."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.console.errors import OptionError
from server.console.options import (
    DEFAULT_URL,
    admin_token,
    job_body,
    model_choice,
    orchestrator_url,
    plot_size,
)


def test_the_flag_wins_then_the_first_url_of_the_environment_then_the_default() -> None:
    env = {"ORCHESTRATOR_URL": "https://a.lan:11999/, http://b.lan:11999"}
    assert orchestrator_url("http://flag:1/", env) == "http://flag:1"
    assert orchestrator_url(None, env) == "https://a.lan:11999"
    assert orchestrator_url(None, {}) == DEFAULT_URL


def test_an_orchestrator_that_is_not_an_http_url_is_refused_naming_the_flag() -> None:
    with pytest.raises(OptionError, match="--orchestrator: an http:// or https:// URL"):
        orchestrator_url("gpu-box:11999", {})


def test_the_token_comes_from_the_file_first_line_else_the_environment(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  s3cret  \nignored\n")
    assert admin_token(token_file, {"FEDAVG_ADMIN_TOKEN": "env"}) == "s3cret"
    assert admin_token(None, {"FEDAVG_ADMIN_TOKEN": "env"}) == "env"
    assert admin_token(None, {"FEDAVG_ADMIN_TOKEN": ""}) is None


@pytest.mark.parametrize(
    ("content", "error"),
    [(None, "cannot read"), ("\n\n", "is empty"), ("x" * 5000, "is over 4096 bytes")],
)
def test_a_token_file_that_holds_no_token_is_refused(
    tmp_path: Path, content: str | None, error: str
) -> None:
    token_file = tmp_path / "token"
    if content is not None:
        token_file.write_text(content)
    with pytest.raises(OptionError, match=f"--token-file: .*{error}"):
        admin_token(token_file, {})


def test_a_model_is_an_arch_name_or_a_json_spec() -> None:
    assert model_choice("cnn") == "cnn"
    assert model_choice(None) is None
    assert model_choice('{"arch": "mlp", "hidden": [32]}') == {"arch": "mlp", "hidden": [32]}
    with pytest.raises(OptionError, match="--model: not valid JSON"):
        model_choice("{arch: mlp}")


def test_the_body_carries_only_the_flags_given_training_settings_under_train() -> None:
    assert job_body(None, {}) == {}
    options = {
        "model": "cnn",
        "partition": "dirichlet:0.5",
        "strategy": "fedadam",
        "server_lr": 0.1,
        "lr": 0.01,
        "batch_size": 16,
        "local_epochs": 2,
        "proximal_mu": 0.0,
        "aggregation": None,
    }
    assert job_body(5, options) == {
        "rounds": 5,
        "model": "cnn",
        "partition": "dirichlet:0.5",
        "strategy": "fedadam",
        "server_lr": 0.1,
        "train": {"lr": 0.01, "batch_size": 16, "local_epochs": 2, "proximal_mu": 0.0},
    }


def test_a_plot_size_is_width_x_height_within_bounds() -> None:
    assert plot_size("640x480") == (640, 480)
    for bad in ("640", "axb", "10x10", "9000x100"):
        with pytest.raises(OptionError, match="--size"):
            plot_size(bad)
