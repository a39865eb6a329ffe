"""The ``vitalmon`` subcommands that read a store (query, stats, report), talk to the
broker (watch, ack) or start a tool (demo, replay), and what they share with
:mod:`monitor.cli`: ``--since`` parsing, loading the config, the short-lived commands'
logging."""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from monitor import config as config_mod
from monitor import logs
from monitor.model import iso

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


def cmd_cluster(args: argparse.Namespace) -> int:
    """``vitalmon cluster``: the stream, members and partition map of the config's
    ``type: jetstream`` source, read from NATS (exit 1 when none is configured or the
    cluster cannot be reached)."""
    cfg = _load(args.config)
    setup_logging("warning")
    sources = [s for s in cfg.sources if isinstance(s, config_mod.JetStreamSourceConfig)]
    if not sources:
        print("vitalmon cluster: the config has no sources[] of type jetstream", file=sys.stderr)
        return 1
    import asyncio

    from monitor.sources.jetstream.status import cluster_status, render

    for src in sources:
        try:
            status = asyncio.run(cluster_status(src))
        except Exception as exc:  # noqa: BLE001 - say why, never a traceback
            print(f"vitalmon cluster: {src.servers}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(status) if args.format == "json" else render(status))
    return 0


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

    routes: list[Any] = []
    if args.routes:
        try:
            loaded = yaml.safe_load(Path(args.routes).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            print(f"vitalmon demo: cannot read --routes {args.routes}: {exc}", file=sys.stderr)
            return 2
        if not isinstance(loaded, list):
            print(f"vitalmon demo: {args.routes}: expected a list of routes", file=sys.stderr)
            return 2
        routes = loaded
    return demo(
        duration=args.duration,
        beds=args.beds,
        speed=args.speed,
        keep=args.verbose or None,
        routes=routes,
        webhook=args.webhook,
        webhook_secret_file=args.webhook_secret_file,
    )


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
