"""Simulators that feed vitalmon: simulated patients and the transports that publish them.

* :mod:`simulators.patient` -- seeded, deterministic patients (pure, no I/O);
* :mod:`simulators.mqtt` -- a bedside-monitor publisher (``python -m simulators mqtt``);
* :mod:`simulators.serial` -- serial devices on ptys (``python -m simulators serial``).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType


def stop_on_signals(log: logging.Logger) -> threading.Event:
    """An event set by SIGINT or SIGTERM (the handlers only set it)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop
