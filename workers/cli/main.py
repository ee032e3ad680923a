"""The ``softunlearn`` command line: engine commands and service commands."""

from __future__ import annotations

import argparse
import sys

from workers.cli import engine_commands, service_commands

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="softunlearn",
        description="Correct trained classifiers for fairness and robustness by soft-weighted unlearning.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine_commands.register(sub)
    service_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
