"""The `registry-gateway` command line: parses arguments and calls the library.

Each subcommand lives in its own module with a `register(subparsers)` function
that adds its parser and sets `func`. Errors of the GatewayError family are
caught here, once: one line on standard error and exit status 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from gateway import __version__
from gateway.errors import GatewayError

COMMAND_MODULES = (
    "gateway.serve",
    "gateway.demo",
    "gateway.snippet_cli",
    "gateway.certs_cli",
    "gateway.probe_cli",
    "gateway.trust_cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="registry-gateway",
        description=(
            "HTTPS gateway, certificate tool and connection probe for private "
            "Docker/OCI registries."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args) or 0)
    except GatewayError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`... | head`); nothing is left to report.
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 1


def setup_logging(level: str) -> None:
    """Send log records to standard error as `LEVEL logger: message` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("gateway")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
