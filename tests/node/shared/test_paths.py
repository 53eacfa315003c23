"""The one place FEDAVG_HOME is resolved."""

from pathlib import Path

from node.shared.paths import cpu_count, default_home, fedavg_home


def test_default_home_follows_xdg_then_home() -> None:
    assert default_home({"XDG_DATA_HOME": "/xdg"}) == Path("/xdg/fedavg")
    assert default_home({"HOME": "/home/u"}) == Path("/home/u/.local/share/fedavg")


def test_fedavg_home_wins_over_the_default_and_empty_counts_as_unset() -> None:
    assert fedavg_home({"FEDAVG_HOME": "/srv/fed", "HOME": "/home/u"}) == Path("/srv/fed")
    assert fedavg_home({"FEDAVG_HOME": "", "HOME": "/home/u"}) == Path(
        "/home/u/.local/share/fedavg"
    )


def test_cpu_count_is_at_least_one() -> None:
    assert cpu_count() >= 1
