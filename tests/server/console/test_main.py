"""The ``fedavg`` command line: its subcommands and flags, and the exit code of each failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.console.main import build_parser, run
from server.demo.local_cluster import free_port


def test_every_subcommand_parses_with_its_flags() -> None:
    parser = build_parser()
    train = parser.parse_args(
        [
            "train",
            "mnist",
            "--rounds",
            "5",
            "--model",
            "cnn",
            "--partition",
            "dirichlet:0.5",
            "--strategy",
            "fedadam",
            "--server-lr",
            "0.1",
            "--local-epochs",
            "2",
            "--detach",
        ]
    )
    assert (train.dataset, train.rounds, train.server_lr, train.local_epochs) == (
        "mnist",
        5,
        0.1,
        2,
    )
    assert train.detach and not train.json
    plot = parser.parse_args(["plot", "out.png"])
    assert plot.run is None and plot.output == Path("out.png") and plot.size == "1200x800"
    assert parser.parse_args(["plot", "run-1", "out.png"]).run == "run-1"
    export = parser.parse_args(["export", "run-1", "--json", "-o", "x.json"])
    assert (export.run, export.format, export.output) == ("run-1", "json", Path("x.json"))
    assert parser.parse_args(["status", "--json", "--orchestrator", "http://h:1"]).json
    local = parser.parse_args(["train", "digits", "--mode", "local"])
    assert (local.dataset, local.mode) == ("digits", "local")
    assert parser.parse_args(["train", "mnist"]).mode is None  # the server decides, or asks
    evaluate = parser.parse_args(["evaluate", "digits", "--model", "m.safetensors", "--json"])
    assert (evaluate.dataset, evaluate.model, evaluate.json) == ("digits", "m.safetensors", True)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["export", "run-1"],
        ["export", "--csv", "--json"],
        ["train"],
        ["status", "--token", "x"],
        ["train", "digits", "--mode", "everywhere"],
        ["evaluate", "digits"],
    ],
)
def test_a_bad_command_line_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run(argv, {})
    assert exited.value.code == 2


def test_a_bad_value_exits_2_naming_its_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["status", "--orchestrator", "localhost:11999"], {}) == 2
    assert "--orchestrator: an http:// or https:// URL" in capsys.readouterr().err


def test_an_orchestrator_that_is_not_there_exits_3_saying_what_to_set(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert run(["nodes"], {"ORCHESTRATOR_URL": url}) == 3
    err = capsys.readouterr().err
    assert f"cannot reach {url}" in err and "ORCHESTRATOR_URL" in err
