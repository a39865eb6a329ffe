"""``vitalmon replay``: a recorded numerics CSV through the real engine, with a report.

A recording (one bed) is read into :class:`~monitor.model.Reading` objects, fed in
event-time order through :class:`~monitor.engine.Engine` with the configured rules, and
also through a **naive monitor**: the same limits with every ``delay_s`` and
``clear_band`` set to 0 and ``confirm`` 1 (an alarm on every single reading beyond a
limit, artefacts included, cleared by the first reading back within it), no trend rules
and no flapping detection. The report lists vitalmon's alert events and compares the
two: alerts raised by priority, alarm burden (alerts raised per patient-hour) and time
in alarm.

Input: a CSV with a ``time_s`` column (seconds from the start of the recording) and one
column per numeric. :data:`DEFAULT_MAP` maps the MIMIC-II numerics names:

======================= ============= =========================================
column                  vital@device  note
======================= ============= =========================================
``HR``                  hr@ecg        ECG heart rate
``PULSE``               hr@pleth      pulse rate of the oximeter: a series of
                                      its own, so both are kept and alarmed
``SpO2``                spo2@pleth
``RESP``                rr@resp       impedance respiration
``ABPSys/Dias/Mean``    sbp/dbp/map   invasive arterial pressure, device ``abp``
``NBPSys/Dias/Mean``    sbp/dbp/map   cuff pressure, device ``nibp``, intermittent
======================= ============= =========================================

Column names match case-insensitively. ``--map COL=vital[@device]`` adds or overrides
a column (``COL=none`` ignores it). A blank cell or ``0`` means "not available"
(MIMIC-II convention) and is counted as missing. Every other value goes through
:func:`monitor.sources.codecs.check_value`, exactly as MQTT input does: what it refuses
(``implausible``, ``not_finite``, ``wrong_type``) is counted by column and cause and is
never alarmed.

Event time is ``start + time_s`` (``start`` defaults to :data:`DEFAULT_START`), so the
alerts and their ids are the same at any playback speed.

Sampling: nothing is adjusted for the recording. The engine judges each series by its
measurement mode (:mod:`monitor.engine.modes`): numerics recorded once a minute are
continuous series (a delay run may span gaps of 1.5 intervals, so at one sample a
minute any ``delay_s`` from 1 to 60 s means "two consecutive samples beyond the limit"),
a cuff column is intermittent (each reading judged on its own). A file sampled at most
every ``rules.modes.continuous_max_interval_s`` (120 s) is a monitor's numerics: its
other columns are continuous from their first sample (the replay simulator says so in
its messages too); a sparser file (a chart) leaves them to the engine. So a replay gives
exactly what the daemon gives on the same readings with the same configuration.
"""

from __future__ import annotations

from monitor.replay.command import check_store, keep, main, plot, save
from monitor.replay.output import (
    ALERT_HEADER,
    SUMMARY_ROWS,
    alert_line,
    header_lines,
    offset,
    print_table_footer,
    print_table_header,
    render_table,
    summary_lines,
)
from monitor.replay.recording import (
    DEFAULT_MAP,
    DEFAULT_START,
    TIME_COLUMN,
    Column,
    Recording,
    ReplayError,
    load_csv,
    parse_map,
    parse_speed,
    parse_start,
)
from monitor.replay.run import Report, naive_rules, play, replay, summarize

__all__ = [
    "ALERT_HEADER",
    "DEFAULT_MAP",
    "DEFAULT_START",
    "SUMMARY_ROWS",
    "TIME_COLUMN",
    "Column",
    "Recording",
    "ReplayError",
    "Report",
    "alert_line",
    "check_store",
    "header_lines",
    "keep",
    "load_csv",
    "main",
    "naive_rules",
    "offset",
    "parse_map",
    "parse_speed",
    "parse_start",
    "play",
    "plot",
    "print_table_footer",
    "print_table_header",
    "render_table",
    "replay",
    "save",
    "summarize",
    "summary_lines",
]
