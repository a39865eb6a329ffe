"""``vitalmon`` command line: run, check-config, query, stats, report, watch, ack,
demo, replay."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path

from monitor import config as config_mod
from monitor import logs
from monitor.model import VITALS, iso

log = logging.getLogger("vitalmon")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_since(text: str, now: float | None = None) -> float:
    """``10m``, ``6h``, ``90s``, ``2d`` (ago) or an ISO 8601 time -> epoch seconds."""
    m = _DURATION.match(text)
    now = time.time() if now is None else now
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--since {text!r}: give a duration like 10m, 6h, 2d or an ISO 8601 time"
        ) from None
    if dt.tzinfo is None:
        raise argparse.ArgumentTypeError(f"--since {text!r}: an ISO time needs its UTC offset")
    return dt.timestamp()


#: Exit codes of ``vitalmon run`` (systemd: RestartPreventExitStatus=2).
EXIT_OK = 0  #: stopped cleanly (SIGTERM/SIGINT)
EXIT_FATAL = 1  #: a fatal error at start or while running: worth a restart
EXIT_CONFIG = 2  #: the configuration is invalid: a restart cannot help


def setup_logging(level: str = "info") -> None:
    """Logging of the short-lived commands (human format)."""
    logs.setup(config_mod.LogConfig(format="human"), level_override=level)


def _load(path: str, code: int = 1) -> config_mod.Config:
    try:
        return config_mod.load(path)
    except config_mod.ConfigError as exc:
        print(f"vitalmon: invalid configuration {path}:", file=sys.stderr)
        for err in exc.errors:
            print(f"  {err}", file=sys.stderr)
        raise SystemExit(code) from None


def secret_warnings(cfg: config_mod.Config) -> list[str]:
    """Secret files readable by group or others (check-config warns, run logs)."""
    from monitor.privacy import check_secret_file

    paths = [
        ("mqtt.password_file", cfg.mqtt.password_file),
        ("mqtt.tls.key_file", cfg.mqtt.tls.key_file if cfg.mqtt.tls else None),
        ("privacy.key_file", cfg.privacy.key_file),
    ]
    for i, sink in enumerate(cfg.store):
        if isinstance(sink, config_mod.InfluxStoreConfig):
            paths += [
                (f"store[{i}].token_file", sink.token_file),
                (f"store[{i}].patient_key_file", sink.patient_key_file),
            ]
    out = []
    for key, path in paths:
        if path:
            warning = check_secret_file(path)
            if warning:
                out.append(f"{key}: {warning}")
    return out


PROCESS_NAME = "vitalmon"


def set_process_name(name: str = PROCESS_NAME) -> bool:
    """Make ``pidof vitalmon`` (and ``ps -C``, ``pkill -x``, ``top``) find this process;
    -> whether the command line could be rewritten.

    An installed daemon runs as ``python3 /usr/local/bin/vitalmon run ...``. Debian's
    ``pidof`` (sysvinit-utils) compares the name with argv[0] and its basename, and looks
    at the kernel's process name (``comm``) only when argv[0] is empty or has a space, so
    setting ``comm`` (PR_SET_NAME) alone does not do. argv[0] is therefore replaced in
    place by ``name``, the rest kept (``ps`` shows ``vitalmon run -c FILE``), and ``comm``
    set as well. Linux only, best effort: where /proc does not allow it, nothing changes.
    """
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(name[:15])  # the kernel's limit (TASK_COMM_LEN)
    try:
        stat = Path("/proc/self/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        start, end = int(fields[45]), int(fields[46])  # arg_start, arg_end (proc(5))
        old = Path("/proc/self/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return False
    # The interpreter, then the script (or -m monitor), then the arguments: keep those.
    tail = b"".join(os.fsencode(arg) + b"\0" for arg in sys.argv[1:])
    new = os.fsencode(name) + b"\0" + tail
    if end - start != len(old) or not old.endswith(tail) or len(new) > len(old):
        return False  # not the layout expected (already rewritten?): leave it
    try:
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(new.ljust(len(old), b"\0"))
    except OSError:
        return False
    return True


def cmd_run(args: argparse.Namespace) -> int:
    set_process_name()
    cfg = _load(args.config, EXIT_CONFIG)
    logs.setup(cfg.log, level_override=args.log_level)
    for warning in secret_warnings(cfg):
        logging.getLogger("vitalmon.config").warning("%s", warning)
    from monitor.daemon import run

    return run(cfg, config_path=args.config, log_level=args.log_level)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    for warning in secret_warnings(cfg):
        print(f"warning: {warning}", file=sys.stderr)
    n_rules = sum(1 for t in cfg.rules.thresholds.values() if t.enabled)
    print(
        f"{args.config}: OK ({len(cfg.sources)} source(s), {len(cfg.store)} store(s), "
        f"thresholds for {n_rules} vitals)"
    )
    return 0


def _store_config(args: argparse.Namespace) -> config_mod.Config:
    """The config of a command reading a store: with ``--store`` and no config file at the
    default path, the built-in one (limits and profiles as shipped)."""
    default = args.config == config_mod.DEFAULT_CONFIG_PATH
    if args.store and default and not Path(args.config).exists():
        return config_mod.Config()
    return _load(args.config)


def _store(cfg: config_mod.Config, path: str | None = None) -> str | None:
    """The SQLite store's path (``--store``, else the config's), or None after saying why
    it cannot be read."""
    path = path or cfg.sqlite_path
    if path is None:
        print("vitalmon: the config has no sqlite store", file=sys.stderr)
    elif not Path(path).exists():
        print(f"vitalmon: no store at {path} (has the daemon run yet?)", file=sys.stderr)
    else:
        return path
    return None


def cmd_query(args: argparse.Namespace) -> int:
    cfg = _store_config(args)
    from monitor.sinks.sqlite import query_readings

    path = _store(cfg, args.store)
    if path is None:
        return 1
    rows = query_readings(path, args.bed, ward=args.ward, vital=args.vital, since=args.since)
    out = sys.stdout
    if args.format == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(["ts", "ward", "bed", "device", "vital", "value"])
        for ts, ward, bed, device, vital, value, _flag in rows:
            w.writerow([iso(ts), ward, bed, device, vital, _num(value)])
    else:
        keys = ("ts", "ward", "bed", "device", "vital", "value", "flag")
        records = [dict(zip(keys, (iso(r[0]), *r[1:5], r[5], r[6]), strict=True)) for r in rows]
        json.dump(records, out, indent=1)
        out.write("\n")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    cfg = _store_config(args)
    from monitor.sinks.sqlite import connect
    from monitor.views import stats

    path = _store(cfg, args.store)
    if path is None:
        return 1
    since = args.since if args.since is not None else parse_since("24h")
    conn = connect(path, readonly=True)
    try:
        rows = stats.compute(conn, cfg, since, bed=args.bed, ward=args.ward, vital=args.vital)
        hint = "" if rows else stats.span_hint(conn, args.bed)
    finally:
        conn.close()
    if args.format == "csv":
        sys.stdout.write(stats.to_csv(rows))
    elif args.format == "json":
        sys.stdout.write(stats.to_json(rows, {"since": iso(since), "until": iso(time.time())}))
    elif not rows:
        print(f"no readings since {iso(since)}{hint}", file=sys.stderr)
    else:
        print(f"since {iso(since)}; out% = share of the measured time beyond the warn limits")
        sys.stdout.write(stats.table(rows))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    cfg = _store_config(args)
    from monitor.views import report

    try:
        out = report.check_output(args.output)
    except report.ReportError as exc:
        print(f"vitalmon report: {exc}", file=sys.stderr)
        return 1
    path = _store(cfg, args.store)
    if path is None:
        return 1
    from monitor.sinks.sqlite import connect

    since = args.since if args.since is not None else parse_since("6h")
    conn = connect(path, readonly=True)
    try:
        print(report.make(conn, cfg, args.ward, args.bed, since, time.time(), out))
    except report.ReportError as exc:
        print(f"vitalmon report: {exc}", file=sys.stderr)
        return 1
    finally:
        conn.close()
    return 0


_BROKER_OPTIONS = ("host", "port", "username", "password_file")


def broker_config(args: argparse.Namespace) -> config_mod.Config:
    """The configuration of a command that only talks to the broker (watch, ack): the
    config file; with no file at the default path and the broker named by options, the
    built-in defaults (vitalmon's default topics). ``--host``, ``--port``, ``--username``
    and ``--password-file`` apply over its ``mqtt`` section."""
    given = {k: getattr(args, k) for k in _BROKER_OPTIONS if getattr(args, k) is not None}
    path = args.config
    if path == config_mod.DEFAULT_CONFIG_PATH and not Path(path).exists():
        if not given:
            print(
                f"vitalmon {args.command}: no config at {path}: give -c FILE, or the "
                "broker with --host/--port",
                file=sys.stderr,
            )
            raise SystemExit(1)
        cfg = config_mod.Config()
    else:
        cfg = _load(path)
    if not given:
        return cfg
    from pydantic import ValidationError

    try:
        mqtt = config_mod.MqttConfig.model_validate(
            {**cfg.mqtt.model_dump(exclude_defaults=True), **given}
        )
    except ValidationError as exc:
        for err in exc.errors():
            key = str(err["loc"][0]) if err["loc"] else "mqtt"
            msg = err["msg"].removeprefix("Value error, ")
            print(f"vitalmon {args.command}: --{key.replace('_', '-')}: {msg}", file=sys.stderr)
        raise SystemExit(1) from None
    return cfg.model_copy(update={"mqtt": mqtt})


def cmd_watch(args: argparse.Namespace) -> int:
    cfg = broker_config(args)
    by = args.by or os.environ.get("USER") or os.environ.get("LOGNAME") or "central-station"
    from monitor.views import watch

    return watch.run(cfg, by)


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else repr(value)


def cmd_ack(args: argparse.Namespace) -> int:
    cfg = broker_config(args)
    setup_logging("warning")
    import asyncio

    from monitor.sources.commands import send_ack

    try:
        event = asyncio.run(send_ack(cfg, args.id, args.by, args.timeout))
    except LookupError as exc:
        print(f"vitalmon ack: refused: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(
            f"vitalmon ack: no answer from the daemon within {args.timeout:g} s "
            f"(broker {cfg.mqtt.host}:{cfg.mqtt.port})",
            file=sys.stderr,
        )
        return 1
    print(json.dumps(event))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    setup_logging("warning" if not args.verbose else "info")
    from monitor.demo import demo

    return demo(duration=args.duration, beds=args.beds, speed=args.speed, keep=args.verbose or None)


def cmd_replay(args: argparse.Namespace) -> int:
    rules = _load(args.config).rules if args.config else None
    from monitor.replay import main as replay

    return replay(
        args.file,
        bed=args.bed,
        ward=args.ward,
        speed=args.speed,
        rules=rules,
        start=args.start,
        maps=args.map,
        fmt=args.format,
        store=args.store,
        report_to=args.report,
    )


def _version() -> str:
    """The installed distribution's version (the package's own when run from a tree)."""
    from importlib.metadata import PackageNotFoundError, version

    from monitor import __version__

    try:
        return version("vitalmon")
    except PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="vitalmon", description="Real-time vital-sign monitoring daemon."
    )
    p.add_argument("--version", action="version", version=f"vitalmon {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "-c",
            "--config",
            default=config_mod.DEFAULT_CONFIG_PATH,
            help="YAML config file (default: %(default)s)",
        )

    def with_broker(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--host", help="broker host (default: mqtt.host of the config)")
        sp.add_argument("--port", type=int, help="broker port (default: mqtt.port)")
        sp.add_argument("--username", help="broker login (default: mqtt.username)")
        sp.add_argument(
            "--password-file",
            metavar="FILE",
            help="file whose first line is the password (default: mqtt.password_file)",
        )

    def with_store(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--store",
            metavar="FILE.db",
            help="read this SQLite store (e.g. one written by replay --store) instead of"
            " the config's",
        )

    sp = sub.add_parser("run", help="run the daemon in the foreground")
    with_config(sp)
    sp.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("check-config", help="validate a config: exit 0, or 1 listing errors")
    with_config(sp)
    sp.set_defaults(func=cmd_check_config)

    sp = sub.add_parser("query", help="print stored readings of a bed")
    with_config(sp)
    with_store(sp)
    sp.add_argument("--bed", required=True)
    sp.add_argument("--ward")
    sp.add_argument("--vital", choices=sorted(VITALS))
    sp.add_argument("--since", type=parse_since, help="10m, 6h, 2d or an ISO 8601 time")
    sp.add_argument("--format", choices=["csv", "json"], default="csv")
    sp.set_defaults(func=cmd_query)

    sp = sub.add_parser("stats", help="per bed and vital: n, mean, sd, percentiles, out of range")
    with_config(sp)
    with_store(sp)
    sp.add_argument("--bed")
    sp.add_argument("--ward")
    sp.add_argument("--vital")
    sp.add_argument("--since", type=parse_since, help="10m, 6h, 2d or ISO 8601 (default 24h)")
    sp.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sp.set_defaults(func=cmd_stats)

    sp = sub.add_parser("report", help="trend plots of a bed: PNG, PDF or SVG")
    with_config(sp)
    with_store(sp)
    sp.add_argument("--bed", required=True)
    sp.add_argument("--ward")
    sp.add_argument("--since", type=parse_since, help="10m, 6h, 2d or ISO 8601 (default 6h)")
    sp.add_argument("-o", "--output", required=True, help="FILE.png, .pdf or .svg")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("watch", help="live central station in the terminal (MQTT only)")
    with_config(sp)
    with_broker(sp)
    sp.add_argument("--by", help="operator named in acknowledgements (default: $USER)")
    sp.set_defaults(func=cmd_watch)

    sp = sub.add_parser("ack", help="acknowledge an alert (as the named operator)")
    with_config(sp)
    with_broker(sp)
    sp.add_argument("id", help="the alert's id")
    sp.add_argument("--by", required=True, help="who acknowledges (recorded in the audit trail)")
    sp.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the daemon")
    sp.set_defaults(func=cmd_ack)

    sp = sub.add_parser("demo", help="broker + simulated beds + daemon, alerts printed live")
    sp.add_argument("--duration", type=float, default=None, help="stop after S seconds")
    sp.add_argument("--beds", type=int, default=6, help="simulated beds (one deteriorates)")
    sp.add_argument(
        "-v", "--verbose", action="store_true", help="show the daemon's log, keep the temp dir"
    )
    sp.add_argument("--speed", type=float, default=None, help=argparse.SUPPRESS)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser(
        "replay", help="replay a numerics CSV through the rules; alerts vs a naive monitor"
    )
    sp.add_argument("file", metavar="FILE.csv", help="CSV with time_s and one column per numeric")
    sp.add_argument("--bed", required=True)
    sp.add_argument("--ward", help="ward of the readings (default: default)")
    sp.add_argument("--speed", default="max", help="max (default) or N: play at N times real time")
    sp.add_argument(
        "-c", "--config", help="YAML config whose rules are used (default: built-in limits)"
    )
    sp.add_argument(
        "--start", help="ISO 8601 event time of time_s 0 (default 2000-01-01T00:00:00Z)"
    )
    sp.add_argument(
        "--map",
        action="append",
        default=[],
        metavar="COL=VITAL[@DEVICE]",
        help="map a column to a vital (COL=none ignores it); repeatable",
    )
    sp.add_argument("--format", choices=["table", "json"], default="table")
    sp.add_argument(
        "--store",
        metavar="FILE.db",
        help="also write the readings and alert events into this SQLite store (for"
        " report, stats and query --store)",
    )
    sp.add_argument(
        "--report",
        metavar="FILE.png|.pdf|.svg",
        help="also draw vitalmon report's trend plot of the whole recording",
    )
    sp.set_defaults(func=cmd_replay)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:
        code = 0
    raise SystemExit(code)
