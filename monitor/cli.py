"""``vitalmon`` command line: run, check-config, query, stats, report, watch, ack,
demo, replay."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from pathlib import Path

from monitor import config as config_mod
from monitor import logs
from monitor.cli_commands import (
    _load,
    broker_config,
    cmd_ack,
    cmd_cluster,
    cmd_demo,
    cmd_query,
    cmd_replay,
    cmd_report,
    cmd_stats,
    cmd_watch,
    parse_since,
    setup_logging,
)
from monitor.model import VITALS

log = logging.getLogger("vitalmon")

#: Exit codes of ``vitalmon run`` (systemd: RestartPreventExitStatus=2).
EXIT_OK = 0  #: stopped cleanly (SIGTERM/SIGINT)
EXIT_FATAL = 1  #: a fatal error at start or while running: worth a restart
EXIT_CONFIG = 2  #: the configuration is invalid: a restart cannot help


def secret_warnings(cfg: config_mod.Config) -> list[str]:
    """Secret files readable by group or others (check-config warns, run logs)."""
    from monitor.privacy import check_secret_file

    paths = [
        ("mqtt.password_file", cfg.mqtt.password_file),
        ("mqtt.tls.key_file", cfg.mqtt.tls.key_file if cfg.mqtt.tls else None),
        ("privacy.key_file", cfg.privacy.key_file),
        ("web.tls.key_file", cfg.web.tls.key_file if cfg.web.tls else None),
        ("web.users_file", cfg.web.users_file if os.path.exists(cfg.web.users_file) else None),
    ]
    for i, route in enumerate(cfg.alerts.routes):
        for field in ("secret_file", "password_file"):
            paths.append(
                (f"alerts.routes[{i}].receiver.{field}", getattr(route.receiver, field, None))
            )
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

    def with_bed(sp: argparse.ArgumentParser, required: bool) -> None:
        """A command that reads a bed's history from a store."""
        with_config(sp)
        with_store(sp)
        sp.add_argument("--bed", required=required)
        sp.add_argument("--ward")

    sp = sub.add_parser("run", help="run the daemon in the foreground")
    with_config(sp)
    sp.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("check-config", help="validate a config: exit 0, or 1 listing errors")
    with_config(sp)
    sp.set_defaults(func=cmd_check_config)

    sp = sub.add_parser("query", help="print stored readings of a bed")
    with_bed(sp, required=True)
    sp.add_argument("--vital", choices=sorted(VITALS))
    sp.add_argument("--since", type=parse_since, help="10m, 6h, 2d or an ISO 8601 time")
    sp.add_argument("--format", choices=["csv", "json"], default="csv")
    sp.set_defaults(func=cmd_query)

    sp = sub.add_parser("stats", help="per bed and vital: n, mean, sd, percentiles, out of range")
    with_bed(sp, required=False)
    sp.add_argument("--vital")
    sp.add_argument("--since", type=parse_since, help="10m, 6h, 2d or ISO 8601 (default 24h)")
    sp.add_argument("--format", choices=["table", "csv", "json"], default="table")
    sp.set_defaults(func=cmd_stats)

    sp = sub.add_parser("report", help="trend plots of a bed: PNG, PDF or SVG")
    with_bed(sp, required=True)
    sp.add_argument("--since", type=parse_since, help="10m, 6h, 2d or ISO 8601 (default 6h)")
    sp.add_argument("-o", "--output", required=True, help="FILE.png, .pdf or .svg")
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("watch", help="live central station in the terminal (MQTT only)")
    with_config(sp)
    with_broker(sp)
    sp.add_argument("--by", help="operator named in acknowledgements (default: $USER)")
    sp.set_defaults(func=cmd_watch)

    sp = sub.add_parser(
        "cluster", help="the NATS JetStream cluster: stream, members, partition map"
    )
    with_config(sp)
    sp.add_argument("--format", choices=["table", "json"], default="table")
    sp.set_defaults(func=cmd_cluster)

    from monitor.web.cli import add_parsers

    add_parsers(sub, with_config)

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
    sp.add_argument(
        "--webhook",
        metavar="URL",
        help="also deliver every alert event to this webhook (a route, see docs/delivery.md)",
    )
    sp.add_argument(
        "--webhook-secret-file",
        metavar="FILE",
        help="the webhook's HMAC key (first line; default: one made up in the temp dir)",
    )
    sp.add_argument(
        "--routes",
        metavar="FILE.yaml",
        help="more alert routes: a YAML list of alerts.routes entries",
    )
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


__all__ = [
    "EXIT_CONFIG",
    "EXIT_FATAL",
    "EXIT_OK",
    "PROCESS_NAME",
    "broker_config",
    "build_parser",
    "cmd_ack",
    "cmd_check_config",
    "cmd_demo",
    "cmd_query",
    "cmd_replay",
    "cmd_report",
    "cmd_run",
    "cmd_stats",
    "cmd_watch",
    "main",
    "parse_since",
    "secret_warnings",
    "set_process_name",
    "setup_logging",
]
