"""The engine stage: per-series windows and rules, evaluated on event time."""

from monitor.engine.engine import Engine

__all__ = ["Engine"]
