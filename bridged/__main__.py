"""Command line: ``bridged run``, ``bridged check-config`` and ``bridged hash-token``."""

from __future__ import annotations

import argparse
import asyncio
import errno
import importlib.metadata
import logging
import os
import secrets
import sys

import uvloop

from .api.server import run_app
from .app import EXIT_CONFIG, Exit, StartupError, make_app
from .config import Config, ConfigError, describe_dsn
from .configfile import load_config
from .logs import setup_logging
from .orders import ShopUnreachable, check_queries

log = logging.getLogger("bridged")

# What binding the HTTP listener fails with when the address is taken or not this host's.
_LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridged", description=__doc__)
    parser.add_argument("--version", action="version", version=f"bridged {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the daemon in the foreground"),
        ("check-config", "validate a config file (and the shop's queries, if its database answers) and exit"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", "-c", required=True, help="path to the YAML config")
        if name == "check-config":
            cmd.add_argument(
                "--offline",
                action="store_true",
                help="check the file only, without asking the shop's database about orders.query and "
                "orders.reverse_query",
            )
    hash_cmd = sub.add_parser("hash-token", help="print a new API token and its sha256 for api.tokens")
    hash_cmd.add_argument("--stdin", action="store_true", help="hash the token read from standard input")
    args = parser.parse_args(argv)

    if args.command == "hash-token":
        return _hash_token(from_stdin=args.stdin)

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        count = len(exc.problems)
        print(
            f"bridged: invalid config {args.config} ({count} problem{'s' if count > 1 else ''}):",
            *exc.lines,
            sep="\n  ",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if args.command == "check-config":
        return _check_config(args.config, config, offline=args.offline)

    setup_logging(config.logging.level, json_lines=config.logging.json)
    try:
        # aiohttp's run_app, serving through bridged's guarded HTTP server (limits on slow clients).
        run_app(
            make_app(config, config_path=args.config),
            config.http,
            # uvloop: bridged spends about a quarter less CPU per call than on asyncio's own loop
            # (bench/RESULTS.md), most of it in ARI and PostgreSQL socket I/O.
            loop=uvloop.new_event_loop(),
        )
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return exc.exit_code
    except OSError as exc:
        # The database and FastAGI failures are StartupErrors already; what is left is the HTTP site,
        # which aiohttp binds last.
        if exc.errno not in _LISTEN_ERRNOS:
            raise
        where = f"{config.http.host}:{config.http.port}"
        log.error("cannot start: cannot listen for HTTP on %s: %s", where, os.strerror(exc.errno))
        return Exit.LISTEN
    return Exit.OK


def _check_config(path: str, config: Config, *, offline: bool) -> int:
    """The file is valid; unless ``offline``, the shop's database is asked whether the queries return
    the columns bridged reads (prepared, never run). An unreachable database is said so and is no
    error: the file is still valid, and bridged runs while the shop's database is down."""
    summary = f"{len(config.managers)} managers, policy {config.policy}"
    if config.inbound.enabled:
        summary += f", inbound calls on {len(config.inbound.numbers)} numbers"
    if offline:
        print(f"{path}: OK ({summary}; the shop's queries not checked: --offline)")
        return 0
    try:
        problems = asyncio.run(check_queries(config.orders))
    except ShopUnreachable as exc:
        print(
            f"{path}: OK ({summary}); the shop's database {describe_dsn(config.orders.dsn)} did not answer "
            f"({exc}): orders.query and orders.reverse_query were not checked against it"
        )
        return 0
    if problems:
        count = len(problems)
        print(
            f"bridged: invalid config {path}"
            f" ({count} problem{'s' if count > 1 else ''} in the shop's database):",
            *(f"{key}: {message}" for key, message in problems),
            sep="\n  ",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    print(f"{path}: OK ({summary}; the shop's queries return the columns bridged reads)")
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("bridged")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def _hash_token(*, from_stdin: bool) -> int:
    from .api.auth import hash_token

    if from_stdin:
        token = sys.stdin.readline().strip()
        if len(token) < 16:
            print("bridged: a token must have at least 16 characters", file=sys.stderr)
            return EXIT_CONFIG
        print(hash_token(token))
        return 0
    token = secrets.token_urlsafe(32)
    print(f"token:  {token}\nsha256: {hash_token(token)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
