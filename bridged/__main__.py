"""Command line: ``bridged run``, ``bridged check-config`` and ``bridged hash-token``."""

from __future__ import annotations

import argparse
import logging
import secrets
import sys

import uvloop
from aiohttp import web

from .app import EXIT_CONFIG, StartupError, make_app
from .config import ConfigError, load_config
from .logs import setup_logging

log = logging.getLogger("bridged")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bridged", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the daemon in the foreground"),
        ("check-config", "validate a config file and exit"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--config", "-c", required=True, help="path to the YAML config")
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
        print(f"{args.config}: OK ({len(config.managers)} managers, policy {config.policy})")
        return 0

    setup_logging(config.logging.level, json_lines=config.logging.json)
    try:
        web.run_app(
            make_app(config, config_path=args.config),
            # uvloop: bridged spends about a quarter less CPU per call than on asyncio's own loop
            # (bench/RESULTS.md), most of it in ARI and PostgreSQL socket I/O.
            loop=uvloop.new_event_loop(),
            host=config.http.host,
            port=config.http.port,
            print=None,
            access_log=None,
            handle_signals=True,
        )
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return exc.exit_code
    return 0


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
