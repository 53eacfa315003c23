"""Warm buffers for upload bodies, reused from upload to upload.

A fresh 37 MiB ``bytearray`` is zero-filled page by page: about 20 ms of page faults on
every upload, more than it then takes to fill it. Uploads are read a few at a time (the
job's intake slots) and their tensors are folded, that is copied, before the handler ends,
so a buffer is free again as soon as its upload is answered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class BufferPool:
    """Keeps up to ``keep`` released buffers; a lease gets one at least as large as asked.

    A kept buffer serves sizes down to half its length, so a pool sized by one model's
    uploads (whose headers differ by a few bytes) is never refilled, and a pool never holds
    more than ``keep`` buffers, whatever sizes come and go.
    """

    __slots__ = ("_free", "_keep")

    def __init__(self, keep: int) -> None:
        self._keep = keep
        self._free: list[bytearray] = []

    @property
    def kept(self) -> int:
        return len(self._free)

    @contextlib.contextmanager
    def lease(self, size: int) -> Iterator[bytearray]:
        """A buffer of at least ``size`` bytes for the duration of the block.

        The caller must not let anything that views the buffer outlive the block.
        """
        buffer = self._take(size)
        try:
            yield buffer
        finally:
            if len(self._free) < self._keep:
                self._free.append(buffer)

    def _take(self, size: int) -> bytearray:
        fitting = [b for b in self._free if size <= len(b) <= 2 * size]
        if fitting:
            best = min(fitting, key=len)
            self._free.remove(best)
            return best
        return bytearray(size)
