"""The progress rate limit: each stage's first and last report pass, few in between."""

from __future__ import annotations

from server.datasets import Throttled


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_between_a_stages_first_and_last_one_report_per_interval_passes() -> None:
    clock = Clock()
    sent: list[tuple[str, int, int]] = []
    relay = Throttled(lambda *r: sent.append(r), 0.25, clock)
    for done in range(101):  # a hundred reports in one second
        relay("read", done, 100)
        clock.now += 0.01
    relay("write", 0, 2)
    relay("write", 1, 2)  # at once after the stage began: held back
    relay("write", 2, 2)  # a stage's last: always sent

    read = [done for stage, done, _ in sent if stage == "read"]
    assert read[0] == 0 and read[-1] == 100
    assert 4 <= len(read) <= 6, read  # first, about one per 0.25 s, last
    assert read == sorted(set(read))
    assert [r for r in sent if r[0] == "write"] == [("write", 0, 2), ("write", 2, 2)]


def test_a_quiet_stage_passes_every_report() -> None:
    clock = Clock()
    sent: list[tuple[str, int, int]] = []
    relay = Throttled(lambda *r: sent.append(r), 0.25, clock)
    for done in range(4):
        relay("download", done, 3)
        clock.now += 1.0
    assert [done for _, done, _ in sent] == [0, 1, 2, 3]
