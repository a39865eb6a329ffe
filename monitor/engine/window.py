"""Per-series sliding windows on numpy arrays, kept in event-time order."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from monitor.engine.history import History

Array = npt.NDArray[np.float64]


class Window:
    """The readings of one series (bed, device, vital) over the last ``span_s`` of event time,
    and at least its ``min_keep`` newest readings.

    Appending in time order is amortised O(1) (the live region slides along a buffer at
    most about 1.7 times its size and is compacted when it reaches the end, see
    :meth:`_make_room`); an out-of-order reading is
    inserted at its place. ``ts`` and ``values`` are views of the live region, sorted by
    time: valid until the next insert.
    """

    __slots__ = (
        "_end",
        "_minute",
        "_start",
        "_ts",
        "_v",
        "history",
        "max_samples",
        "min_keep",
        "span_s",
    )

    def __init__(
        self,
        span_s: float,
        max_samples: int = 100_000,
        initial: int = 64,
        min_keep: int = 0,
        history: History | None = None,
    ) -> None:
        self.span_s = span_s
        self.max_samples = max_samples
        #: the newest readings kept whatever their age: a continuous series sampled less
        #: often than ``span_s`` still has the readings a confirmed run needs
        self.min_keep = min_keep
        self._ts: Array = np.empty(initial, dtype=np.float64)
        self._v: Array = np.empty(initial, dtype=np.float64)
        self._start = 0
        self._end = 0
        #: where readings leaving the window go, a minute at a time (trend rules that read
        #: further back than ``span_s``); None: they are dropped
        self.history = history
        #: with a history: the minute (floor of horizon / res_s) of the last expiry that
        #: dropped every reading before it; while the horizon stays in that minute, an
        #: appended reading drops nothing (None: not known)
        self._minute: int | None = None

    def __len__(self) -> int:
        return self._end - self._start

    @property
    def ts(self) -> Array:
        return self._ts[self._start : self._end]

    @property
    def values(self) -> Array:
        return self._v[self._start : self._end]

    @property
    def newest(self) -> float:
        return float(self._ts[self._end - 1]) if self._end > self._start else float("-inf")

    def holds(self, ts: float, value: float) -> bool:
        """Whether this exact reading (time and value) is in the window already."""
        live = self._ts[self._start : self._end]
        i = int(np.searchsorted(live, ts, side="left"))
        vals = self._v[self._start : self._end]
        while i < len(live) and live[i] == ts:
            if vals[i] == value:
                return True
            i += 1
        return False

    def add(self, ts: float, value: float) -> int:
        """Insert one reading; returns its index in :attr:`ts` (``len - 1`` when newest)."""
        if self._end == len(self._ts):
            self._make_room()
        end = self._end
        start = self._start
        if end == start or ts >= self._ts[end - 1]:
            self._ts[end] = ts
            self._v[end] = value
            self._end = end + 1
            # (whether _expire would drop anything, checked inline: this is once per
            # reading, and a reading leaves about once a minute)
            if end + 1 - start > self.max_samples:
                return end - (start + self._expire(ts))
            horizon = ts - self.span_s
            if self._ts[start] < horizon:
                hist = self.history
                if hist is None:
                    if self._ts[start + 1] >= horizon and end - start >= self.min_keep:
                        self._start = start + 1  # the oldest leaves (_expire's result)
                        return end - start - 1
                    return end - (start + self._expire(ts))
                if math.floor(horizon / hist.res_s) != self._minute:
                    return end - (start + self._expire(ts))
            return end - start
        live = self._ts[self._start : end]
        idx = self._start + int(np.searchsorted(live, ts, side="right"))
        self._ts[idx + 1 : end + 1] = self._ts[idx:end].copy()
        self._v[idx + 1 : end + 1] = self._v[idx:end].copy()
        self._ts[idx] = ts
        self._v[idx] = value
        self._end = end + 1
        pos = idx - self._start
        self._minute = None  # (the reading may be older than the last horizon)
        dropped = self._expire(self.newest)
        return pos - dropped

    def _expire(self, newest: float) -> int:
        """Drop readings older than the window (and beyond max_samples); returns how many.

        With a :attr:`history`, readings leave a whole minute at a time (the window then
        holds up to a minute more than ``span_s``) and go into it."""
        horizon = newest - self.span_s
        start = self._start
        hist = self.history
        if self._ts[start] < horizon:  # (the floored horizon is never later: checked first)
            minute = None
            if hist is not None:
                minute = math.floor(horizon / hist.res_s)
                horizon = minute * hist.res_s
            live = self._ts[start : self._end]
            start += int(np.searchsorted(live, horizon, side="left"))
            if start > self._end - self.min_keep:  # kept for min_keep: not all are gone
                start, minute = self._end - self.min_keep, None
            self._minute = minute
        start = max(start, self._start, self._end - self.max_samples)
        dropped = start - self._start
        if dropped and hist is not None:
            hist.absorb(self._ts[self._start : start], self._v[self._start : start])
        self._start = start
        return dropped

    def _make_room(self) -> None:
        """The buffer's end is reached: move the live region to its start, in a buffer
        1.25 times larger when it fills more than 7/8 of this one. A steady window so
        keeps between 8/7 and about 1.45 times its readings in memory (a 5-minute window
        at 1 Hz with its history's minute: 300-360 readings in 405 slots), and each
        compaction frees at least an eighth of the buffer, so a reading is copied at most
        7 times on average (one block copy each)."""
        n = len(self)
        size = len(self._ts)
        if n * 8 > size * 7:
            size += max(16, size // 4)
        ts = np.empty(size, dtype=np.float64)
        v = np.empty(size, dtype=np.float64)
        ts[:n] = self._ts[self._start : self._end]
        v[:n] = self._v[self._start : self._end]
        self._ts, self._v, self._start, self._end = ts, v, 0, n
