"""The virtual-node case's one computed figure: RSS per virtual node, a least-squares line."""

from __future__ import annotations

import pytest

from tests.bench.common import BenchError
from tests.bench.virtual_nodes import rss_line


def test_the_line_through_processes_of_different_sizes_gives_the_cost_per_node() -> None:
    # 700 MB a process, 1.5 MB a node, with noise that cancels out.
    points = [(10, 715_000_000 + 1), (10, 715_000_000 - 1), (50, 775_000_000), (100, 850_000_000)]
    slope, intercept = rss_line(points)
    assert slope == pytest.approx(1_500_000, rel=1e-6)
    assert intercept == pytest.approx(700_000_000, rel=1e-6)


def test_processes_of_one_size_cannot_tell_a_node_from_the_runtime() -> None:
    with pytest.raises(BenchError, match="two sizes"):
        rss_line([(50, 800_000_000), (50, 810_000_000)])
