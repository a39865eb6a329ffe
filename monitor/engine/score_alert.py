"""NEWS2 per bed: the score alert (rule ``news2``, kind ``score``) following the RCP
triggers, with its hold and its expiry (:class:`_Alerting`, part of
:class:`~monitor.engine.score.News2Scores`; the policy is in that module's docstring)."""

from __future__ import annotations

from monitor.config import News2Config
from monitor.engine.news2 import Score
from monitor.engine.score_bed import _Bed
from monitor.engine.threshold import Active
from monitor.model import AlertEvent, AlertState, Priority, alert_id

RULE = "news2"

_RANK = {None: 0, Priority.LOW: 1, Priority.MEDIUM: 2, Priority.HIGH: 3}
_LIMIT = {Priority.LOW: 3.0, Priority.MEDIUM: 5.0, Priority.HIGH: 7.0}


class _Alerting:
    """The score alert of each bed (part of News2Scores)."""

    cfg: News2Config

    def _expire(
        self,
        ward: str,
        bed_name: str,
        at: float,
        bed: _Bed,
        missing: tuple[str, ...],
        total: int,
        note: str = "",
    ) -> AlertEvent:
        """The open alert resolves: its evidence (these inputs) has expired."""
        assert bed.active is not None
        assert bed.priority is not None
        a, shown = bed.active, bed.priority
        a.seq += 1
        older = f"{note}; " if note else ""
        message = (
            f"NEWS2 evidence expired: no fresh {', '.join(missing)} "
            f"({older}older than {self.cfg.freshness_s:g} s); alert closed"
        )
        bed.active = bed.priority = bed.lower_since = bed.restored_until = None
        return a.event(
            ward,
            bed_name,
            RULE,
            RULE,
            "score",
            shown,
            AlertState.RESOLVED,
            float(total),
            _LIMIT[shown],
            message,
            at,
        )

    def _trigger(
        self, ward: str, bed_name: str, at: float, bed: _Bed, s: Score, expired: bool = False
    ) -> AlertEvent | None:
        """Judge the alert on score ``s`` at ``at``. ``expired``: ``s`` lost inputs to
        expiry. No evidence, no alert: an open alert resolves at once (no hold) when the
        score is partial (``alert_partial`` false) or, on expiry, triggers nothing."""
        priority, why = s.trigger()
        if (
            bed.active is not None
            and bed.priority is not None
            and ((s.partial and not self.cfg.alert_partial) or (expired and priority is None))
        ):
            return self._expire(ward, bed_name, at, bed, s.missing, s.total)
        if s.partial and not self.cfg.alert_partial:
            return None
        if priority == bed.priority:
            bed.lower_since = None
            return None
        if _RANK[priority] < _RANK[bed.priority] and self.cfg.hold_s > 0:
            if bed.lower_since is None:
                bed.lower_since = at
            if at < bed.lower_since + self.cfg.hold_s:  # (the expression _schedule uses)
                return None
        bed.lower_since = None
        if bed.active is None:
            assert priority is not None
            ident = alert_id(ward, bed_name, RULE, RULE, at)
            bed.active = Active(ident, _RANK[priority], at, 0, RULE, bed.patient)
        a = bed.active
        a.seq += 1
        parts = ", ".join(f"{k} {v}" for k, v in s.components.items() if v)
        if priority is None:
            state, shown = AlertState.RESOLVED, bed.priority or Priority.LOW
            message = f"NEWS2 {s.total}: no trigger ({parts or 'all parameters 0'})"
            bed.active = None
        else:
            state, shown = AlertState.ACTIVE, priority
            message = f"NEWS2 {s.total}: {why} ({parts})"
            if s.partial:
                message += f"; partial, missing {', '.join(s.missing)}"
        bed.priority = priority
        return a.event(
            ward,
            bed_name,
            RULE,
            RULE,
            "score",
            shown,
            state,
            float(s.total),
            _LIMIT[shown],
            message,
            at,
        )
