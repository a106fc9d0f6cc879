"""Command line: ``bridged run --config FILE`` and ``bridged check-config --config FILE``."""

from __future__ import annotations

import argparse
import logging
import sys

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
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"bridged: invalid config: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print(f"{args.config}: OK ({len(config.managers)} managers, policy {config.policy})")
        return 0

    setup_logging(config.logging.level, json_lines=config.logging.json)
    try:
        web.run_app(
            make_app(config, config_path=args.config),
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


if __name__ == "__main__":
    sys.exit(main())
