"""A series' older readings at their clinical resolution: per-minute aggregates.

A series keeps its raw readings for ``rules.window_s`` (and the recent part of its
baseline rules): what threshold rules and recent medians read. Trend rules read further
back (30 min for the default slopes, 4 h 5 min for the baselines), and at 1 Hz that is
14,700 raw readings per series (about 0.25 MB, up to twice that in the window's
buffer). They do not need them one by one: a slope needs sums, a baseline a median.
So the readings that leave the raw window go into :class:`History`, one bucket per
minute of event time (``res_s``), in two rings indexed by the bucket's minute:

* slope ring (``slope_s``, the longest slope window of the vital): per bucket the count,
  first time, mean time, mean value, and the centred sums ``sum (t - mean_t)**2`` and
  ``sum (t - mean_t)(v - mean_v)``. A least-squares fit combines them exactly with the raw
  readings (Chan's pairwise update): the fit over whole buckets is the fit over their
  readings, to rounding.
* baseline ring (``base_s``, the longest recent + baseline span): per bucket the count
  and the median of its readings.

The approximations, bounded by one bucket (tested against the raw computation in
``tests/test_history.py``):

* a slope window's oldest edge falls inside a bucket: the bucket counts when its mean
  time is inside the window (so the window is within half a minute of ``window_s``, in
  whole minutes beyond the raw readings); its span (``min_coverage``) is measured from
  the bucket's first reading;
* a baseline is the count-weighted median of the bucket medians and the raw readings
  before the recent part (each raw reading a bucket of one). It equals the median of the
  readings when every bucket is one reading, and lies within the range of the middle
  bucket's readings otherwise: for a vital whose minute-to-minute spread is small against
  the rule's ``delta`` (the point of a baseline), the difference is a small fraction of
  the readings' spread. A bucket counts when its minute's middle is inside the baseline
  span; the span check (``min_baseline_s``) reads the bucket's minute start;
* a reading that arrives late for a minute already aggregated joins its bucket's sums
  exactly, and its median only as the median of the larger of the two parts.

Memory: 52 bytes per slope bucket and 16 per baseline bucket, allocated at the first
reading that leaves the raw window: 32 slope and 247 baseline buckets for the default HR
rules, about 5.5 KiB, against 0.25-0.5 MB for 4 h 5 min of raw 1 Hz readings.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]
_Ints = npt.NDArray[np.int32]

#: A fit's sufficient statistics: (n, mean t, mean v, sum (t - mean t)**2,
#: sum (t - mean t)(v - mean v)).
Part = tuple[float, float, float, float, float]

#: The columns of a slope bucket that are a :data:`Part`.
_PART = [0, 2, 3, 4, 5]

#: Bucket width (s of event time): a minute, the resolution of trend charts.
RES_S = 60.0


def stats(t: Array, v: Array) -> Part:
    """(n, mean t, mean v, sum (t - mean t)**2, sum (t - mean t)(v - mean v))."""
    n = len(t)
    mt = float(t.sum()) / n  # (ndarray.mean's result, without its overhead)
    mv = float(v.sum()) / n
    dt = t - mt
    return float(n), mt, mv, float(np.dot(dt, dt)), float(np.dot(dt, v - mv))


def combine(parts: Array) -> tuple[float, float]:
    """Rows of :data:`Part` -> (total n, least-squares slope of all their readings); slope
    NaN when the times do not vary (Chan's pairwise update, means relative to the first
    row's)."""
    if len(parts) == 0:
        return 0.0, math.nan
    n = parts[:, 0]
    total = float(n.sum())
    mt_i = parts[:, 1] - parts[0, 1]
    mt = float(np.dot(n, mt_i)) / total
    mv = float(np.dot(n, parts[:, 2])) / total
    d = mt_i - mt
    m2 = float(parts[:, 3].sum() + np.dot(n, d * d))
    c = float(parts[:, 4].sum() + np.dot(n, d * (parts[:, 2] - mv)))
    if m2 <= 0.0:
        return total, math.nan
    return total, c / m2


def weighted_median(values: Array, weights: Array) -> float:
    """The median of ``values`` each counted ``weights`` times (positive integers): with
    all weights 1 it is the plain median (the mean of the two middle values of an even
    count)."""
    order = np.argsort(values, kind="stable")
    v = values[order]
    cum = np.cumsum(weights[order])
    total = float(cum[-1])
    half = total / 2.0
    k = int(np.searchsorted(cum, half, side="left"))
    if float(cum[k]) == half and total % 2 == 0 and k + 1 < len(v):
        return (float(v[k]) + float(v[k + 1])) / 2.0
    return float(v[k])


class History:
    """Per-minute aggregates of the readings that left a series' raw window."""

    __slots__ = ("_b", "_b_med", "_memo", "_s", "_s_idx", "base_s", "res_s", "slope_s")

    def __init__(self, slope_s: float, base_s: float, res_s: float = RES_S) -> None:
        self.res_s = res_s
        self.slope_s = slope_s  #: longest slope window (0: none)
        self.base_s = base_s  #: longest recent + baseline span (0: none)
        #: slope ring: minute index (-1: empty) and [n, first t, mean t, mean v, M2 t, C tv]
        self._s_idx: _Ints | None = None
        self._s: Array | None = None
        #: baseline ring: [minute index (-1: empty), n] and the minute's median
        self._b: _Ints | None = None
        self._b_med: Array | None = None
        #: :meth:`slope_rows`' last answer and the cuts it holds for: (lo, hi, rows, first)
        self._memo: tuple[float, float, Array, float] | None = None

    def _alloc(self) -> None:
        if self.slope_s > 0:
            c = math.ceil(self.slope_s / self.res_s) + 2
            self._s_idx = np.full(c, -1, dtype=np.int32)
            self._s = np.zeros((c, 6), dtype=np.float64)
        if self.base_s > 0:
            c = math.ceil(self.base_s / self.res_s) + 2
            self._b = np.zeros((c, 2), dtype=np.int32)
            self._b[:, 0] = -1
            self._b_med = np.zeros(c, dtype=np.float64)

    def __len__(self) -> int:
        """Buckets held (either ring)."""
        if self._b is not None:
            return int(np.count_nonzero(self._b[:, 0] >= 0))
        return 0 if self._s_idx is None else int(np.count_nonzero(self._s_idx >= 0))

    def absorb(self, ts: Array, vals: Array) -> None:
        """Readings leaving the raw window (sorted by time) -> their minutes' buckets."""
        if len(ts) == 0:
            return
        self._memo = None
        if self._s_idx is None and self._b is None:
            self._alloc()
        idx = np.floor(ts / self.res_s).astype(np.int64)
        cuts = np.flatnonzero(np.diff(idx)) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), len(ts)]
        for a, b in zip(starts, ends, strict=True):
            self._bucket(int(idx[a]), ts[a:b], vals[a:b])

    def _bucket(self, k: int, t: Array, v: Array) -> None:
        n, mt, mv, m2, c = stats(t, v)
        if self._s_idx is not None and self._s is not None:
            i = k % len(self._s_idx)
            old = int(self._s_idx[i])
            row = self._s[i]
            if old == k:  # a late reading for a minute already aggregated: merge exactly
                n0, first, mt0, mv0, m20, c0 = row.tolist()
                tot = n0 + n
                d, dv = mt - mt0, mv - mv0
                row[:] = (
                    tot,
                    min(first, float(t[0])),
                    mt0 + d * n / tot,
                    mv0 + dv * n / tot,
                    m20 + m2 + d * d * n0 * n / tot,
                    c0 + c + d * dv * n0 * n / tot,
                )
            elif old < k:
                self._s_idx[i] = k
                row[:] = (n, float(t[0]), mt, mv, m2, c)
        if self._b is not None and self._b_med is not None:
            i = k % len(self._b_med)
            old, n0 = self._b[i].tolist()
            med = float(np.median(v))
            if old == k:
                if n > n0:
                    self._b_med[i] = med
                self._b[i, 1] = n0 + int(n)
            elif old < k:
                self._b[i] = (k, int(n))
                self._b_med[i] = med

    def slope_parts(self, cut: float) -> tuple[Array, float]:
        """The slope buckets whose mean time is at or after ``cut`` -> (their parts for
        :func:`combine`, rows of :data:`Part`; the earliest first time among them, +inf
        if none)."""
        if self._s_idx is None or self._s is None:
            return np.empty((0, 5)), math.inf
        keep = (self._s_idx >= 0) & (self._s[:, 2] >= cut)
        if not keep.any():
            return np.empty((0, 5)), math.inf
        rows = self._s[keep]
        return rows[:, _PART], float(rows[:, 1].min())

    def slope_rows(self, cut: float) -> tuple[Array, float]:
        """:meth:`slope_parts` with one more, spare, last row (for the caller's raw part),
        as one array. Kept while no bucket changes and ``cut`` passes no bucket's mean
        time: a slope rule asks every few seconds, the answer changes about once a
        minute. The spare row is the caller's to overwrite."""
        memo = self._memo
        if memo is not None and memo[0] < cut <= memo[1]:
            return memo[2], memo[3]
        if self._s_idx is None or self._s is None:
            return np.empty((1, 5)), math.inf
        valid = self._s_idx >= 0
        means = self._s[:, 2]
        keep = valid & (means >= cut)
        out = valid & ~keep
        lo = float(means[out].max()) if out.any() else -math.inf
        rows = np.empty((int(np.count_nonzero(keep)) + 1, 5))
        if len(rows) > 1:
            kept = self._s[keep]
            rows[:-1] = kept[:, _PART]
            hi, first = float(kept[:, 2].min()), float(kept[:, 1].min())
        else:
            hi, first = math.inf, math.inf
        self._memo = (lo, hi, rows, first)
        return rows, first

    def baseline_parts(self, lo: float, hi: float) -> tuple[Array, Array, float, float]:
        """The baseline buckets whose minute's middle is in ``[lo, hi]`` -> (medians,
        counts, the earliest minute's start, the latest minute's end); no buckets: empty
        arrays and infinities."""
        none = (np.empty(0), np.empty(0), math.inf, -math.inf)
        if self._b is None or self._b_med is None:
            return none
        res = self.res_s
        idx = self._b[:, 0]
        mid = (idx + 0.5) * res
        keep = (idx >= 0) & (mid >= lo) & (mid <= hi)
        if not keep.any():
            return none
        kept = idx[keep]
        first, last = float(kept.min()) * res, float(kept.max() + 1) * res
        return self._b_med[keep], self._b[keep, 1].astype(np.float64), first, last
