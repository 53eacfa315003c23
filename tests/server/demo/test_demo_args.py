"""``fedavg-demo``'s flags and the job body they make: a demo can be slowed down to be watched."""

from __future__ import annotations

import pytest

from server.demo.demo import job_body, parse_args


def test_the_default_demo_asks_only_for_its_rounds() -> None:
    assert job_body(parse_args([])) == {"rounds": 5}


def test_batch_size_and_local_epochs_travel_in_the_job_body() -> None:
    args = parse_args(["--epochs", "3", "--batch-size", "8", "--local-epochs", "4"])
    assert job_body(args) == {"rounds": 3, "train": {"batch_size": 8, "local_epochs": 4}}


def test_out_of_range_counts_are_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--nodes", "0"])
    assert exited.value.code == 2
