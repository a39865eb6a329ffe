"""``vitalmon web`` and ``vitalmon user``: the station and its users file."""

from __future__ import annotations

import argparse
import getpass
import sys

from monitor import logs
from monitor.cli_commands import _load
from monitor.web.users import ROLES, UsersFileError, add_user, read_users, remove_user


def cmd_web(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    logs.setup(cfg.log, level_override=args.log_level)
    from monitor.web.server import run

    return run(cfg)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise UsersFileError("the two passwords differ")
    return first


def cmd_user(args: argparse.Namespace) -> int:
    path = args.users_file or _load(args.config).web.users_file
    try:
        return _user(args, path)
    except (UsersFileError, OSError) as exc:
        print(f"vitalmon: {exc}", file=sys.stderr)
        return 1


def _user(args: argparse.Namespace, path: str) -> int:
    if args.action == "list":
        for name, (role, _) in sorted(read_users(path).items()):
            print(f"{name}\t{role}")
        return 0
    if not args.name:
        print(f"vitalmon: vitalmon user {args.action} needs a NAME", file=sys.stderr)
        return 1
    if args.action == "remove":
        if not remove_user(path, args.name):
            print(f"vitalmon: no user {args.name} in {path}", file=sys.stderr)
            return 1
        print(f"{path}: removed {args.name}")
        return 0
    if args.role is None:
        print(f"vitalmon: --role is needed: one of {', '.join(ROLES)}", file=sys.stderr)
        return 1
    existed = add_user(path, args.name, args.role, _password(args))
    print(f"{path}: {'replaced' if existed else 'added'} {args.name} ({args.role})")
    return 0


def add_parsers(sub: argparse._SubParsersAction, with_config: object) -> None:  # type: ignore[type-arg]
    assert callable(with_config)
    sp = sub.add_parser("web", help="the web central station (logins, live ward, bed pages)")
    with_config(sp)
    sp.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sp.set_defaults(func=cmd_web)

    sp = sub.add_parser("user", help="add, remove or list the web station's users")
    with_config(sp)
    sp.add_argument("action", choices=["add", "remove", "list"])
    sp.add_argument("name", nargs="?")
    sp.add_argument("--role", choices=ROLES, help="viewer, nurse (ack, pause) or charge (admit)")
    sp.add_argument("--users-file", metavar="FILE", help="the users file (default: web.users_file)")
    sp.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from the first line of stdin (else asked twice)",
    )
    sp.set_defaults(func=cmd_user)
