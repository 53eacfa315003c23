"""The upload buffer pool: reuse, bounds, and no buffer handed out twice at once."""

from __future__ import annotations

import pytest

from server.job.buffers import BufferPool


def test_a_released_buffer_is_reused_for_a_similar_size() -> None:
    pool = BufferPool(keep=2)
    with pool.lease(1000) as first:
        pass
    with pool.lease(990) as second:  # a header a few bytes shorter
        assert second is first
        assert len(second) >= 990


def test_concurrent_leases_get_distinct_buffers() -> None:
    pool = BufferPool(keep=4)
    with pool.lease(100) as a, pool.lease(100) as b:
        assert a is not b
    assert pool.kept == 2


def test_at_most_keep_buffers_are_kept() -> None:
    pool = BufferPool(keep=2)
    with pool.lease(10), pool.lease(10), pool.lease(10):
        pass
    assert pool.kept == 2


@pytest.mark.parametrize("size", [10, 4000])
def test_a_much_smaller_or_larger_size_gets_a_fresh_buffer(size: int) -> None:
    pool = BufferPool(keep=2)
    with pool.lease(1000) as big:
        pass
    with pool.lease(size) as other:
        assert other is not big
        assert len(other) == size


def test_a_failed_block_still_returns_its_buffer() -> None:
    pool = BufferPool(keep=1)
    with pytest.raises(RuntimeError), pool.lease(50):
        raise RuntimeError("upload refused")
    assert pool.kept == 1
