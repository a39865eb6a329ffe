"""``python -m simulators SIMULATOR [options]``: run a simulator in the foreground."""

from __future__ import annotations

import argparse
import logging
import sys

from simulators import mqtt, replay, serial


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulators", description="Simulated bedside monitors for vitalmon."
    )
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    sub = p.add_subparsers(dest="simulator", required=True, metavar="SIMULATOR")
    sp = sub.add_parser("mqtt", help="publish JSON readings to vitals/{ward}/{bed}/{device}")
    mqtt.add_arguments(sp)
    sp.set_defaults(func=mqtt.main)
    sp = sub.add_parser(
        "serial",
        help="a Masimo, Nellcor, HL7 or JSON-lines device on a pty (a simulated serial port)",
        description="One simulated patient's device output on a pseudo-terminal.",
    )
    serial.add_arguments(sp)
    sp.set_defaults(func=serial.main)
    sp = sub.add_parser(
        "replay",
        help="publish a recorded numerics CSV (MIMIC-II columns) to vitals/{ward}/{bed}/{device}",
        description="A recorded numerics CSV published over MQTT (QoS 1), event time shifted "
        "so that the recording ends about now.",
    )
    replay.add_arguments(sp)
    sp.set_defaults(func=replay.main)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("simulators.mqtt.paho").setLevel(logging.WARNING)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
