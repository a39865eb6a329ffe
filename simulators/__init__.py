"""Simulators that feed vitalmon: simulated patients and the transports that publish them.

* :mod:`simulators.patient` -- seeded, deterministic patients (pure, no I/O);
* :mod:`simulators.mqtt` -- a bedside-monitor publisher (``python -m simulators mqtt``).
"""
