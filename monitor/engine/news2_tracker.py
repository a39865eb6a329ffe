"""One bed's NEWS2 inputs on event time: the latest value of each parameter, and the
score they give at an instant (:mod:`monitor.engine.news2` is the chart). Pure: no I/O."""

from __future__ import annotations

import math
from typing import Final

from monitor.engine.news2 import AVPU, PARAMETERS, Avpu, Inputs, Scale, Score, score


class News2Tracker:
    """The latest value of each NEWS2 parameter of one bed, on event time.

    Feed it with :meth:`update`; ask :meth:`current` for the score at an instant. It
    keeps only each parameter's newest value (by event time), so it answers "now", not
    questions about the past. No wall clock is read: the same updates and the same
    ``at`` always give the same score. ``scale`` may be changed at any time (the
    decision to use scale 2 is clinical and per patient).
    """

    def __init__(self, scale: Scale = 1) -> None:
        self.scale: Scale = scale
        self._latest: dict[str, tuple[float, float | bool | str]] = {}

    def update(self, vital: str, value: float | bool | str, ts: float) -> bool:
        """Record ``value`` of ``vital`` at event time ``ts``; -> whether it is kept.

        ``vital`` is a NEWS2 parameter (:data:`PARAMETERS`): rr, spo2, sbp, hr, temp take
        numbers; ``o2`` takes a bool or 0/1 (1: on oxygen); ``avpu`` takes a letter A, C,
        V, P or U (any case). Other vitals (dbp, map, ...) are ignored (-> False), so
        every reading of a bed may be fed. A value older than the one held for that
        parameter is ignored (-> False); an equal time replaces it. Invalid values
        raise ``ValueError`` (a value of the wrong type ``TypeError``) and change nothing.
        """
        if vital not in PARAMETERS:
            return False
        if not math.isfinite(ts):
            raise ValueError(f"event time must be finite, not {ts!r}")
        norm = _normalise(vital, value)
        held = self._latest.get(vital)
        if held is not None and ts < held[0]:
            return False
        self._latest[vital] = (ts, norm)
        return True

    def set(self, vital: str, value: float | bool | str, ts: float) -> bool:
        """Hold ``value`` of ``vital`` from ``ts`` whatever was held (another device's
        value taking over, :mod:`monitor.engine.score`); -> whether anything changed."""
        if vital not in PARAMETERS:
            return False
        norm = _normalise(vital, value)
        if self._latest.get(vital) == (ts, norm):
            return False
        self._latest[vital] = (ts, norm)
        return True

    def ahead(self, at: float, freshness_s: float) -> bool:
        """Whether a held value is too far ahead of ``at`` to count in :meth:`current`
        (``ts - at > freshness_s``): it will count, with no input changing, once the
        present is within ``freshness_s`` of it."""
        return any(ts - at > freshness_s for ts, _v in self._latest.values())

    def latest(self, vital: str) -> tuple[float, float | bool | str] | None:
        """-> (event time, value) held for ``vital``, or None."""
        return self._latest.get(vital)

    def current(self, at: float, freshness_s: float, *, strict: bool = False) -> Score:
        """The score at event time ``at`` from values within ``freshness_s`` of it.

        A parameter counts when ``abs(at - ts) <= freshness_s`` (either side, so a device
        clock slightly ahead does not drop a value); older or absent ones are
        ``missing``, and the score is partial. ``strict``: a past value counts only while
        ``at < ts + freshness_s`` -- it has expired *at* ``ts + freshness_s`` (the instant
        :class:`~monitor.engine.score.News2Scores` schedules its expiry at, computed by the
        same expression, so the clock and the readings agree on it).
        """
        if not freshness_s >= 0:
            raise ValueError(f"freshness_s must be >= 0, not {freshness_s!r}")
        if strict:
            fresh = {
                p: v
                for p, (ts, v) in self._latest.items()
                if at < ts + freshness_s and ts - at <= freshness_s
            }
        else:
            fresh = {p: v for p, (ts, v) in self._latest.items() if abs(at - ts) <= freshness_s}

        def num(p: str) -> float | None:
            v = fresh.get(p)
            return None if v is None else float(v)

        o2 = fresh.get("o2")
        avpu = fresh.get("avpu")
        return score(
            Inputs(
                rr=num("rr"),
                spo2=num("spo2"),
                o2=None if o2 is None else bool(o2),
                sbp=num("sbp"),
                hr=num("hr"),
                avpu=_avpu(avpu) if isinstance(avpu, str) else None,
                temp=num("temp"),
                scale=self.scale,
            )
        )


_AVPU: Final[dict[str, Avpu]] = {"A": "A", "C": "C", "V": "V", "P": "P", "U": "U"}


def _avpu(letter: str) -> Avpu:
    try:
        return _AVPU[letter]
    except KeyError:
        raise ValueError(f"ACVPU must be one of {', '.join(AVPU)}, not {letter!r}") from None


def _normalise(vital: str, value: float | bool | str) -> float | bool | str:
    """A tracker input checked and put in the form :func:`score` takes."""
    if vital == "avpu":
        if not isinstance(value, str):
            raise TypeError(f"avpu takes a letter, not {value!r}")
        return _avpu(value.strip().upper())
    if isinstance(value, str):
        raise TypeError(f"{vital} takes a number, not {value!r}")
    if vital == "o2":
        if value in (0, 1):  # True, False, 0, 1, 0.0, 1.0
            return bool(value)
        raise ValueError(f"o2 takes a bool or 0/1, not {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{vital} must be finite, not {value!r}")
    return float(value)
