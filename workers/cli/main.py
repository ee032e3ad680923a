"""The ``softunlearn`` command line: engine commands, service commands and client commands.

Each command's dependencies come with one extra of the package: the client commands with the
base install, ``serve`` with ``[server]``, the engine and the worker with ``[worker]``. A
command whose extra is missing exits 2 saying what to install, before importing anything heavy.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys

from app.version import API_VERSION, __version__
from workers.cli import client_commands, engine_commands, service_commands
from workers.cli.exit_codes import EXIT_BAD_INPUT

__all__ = ["NEEDS", "build_parser", "main", "missing_extra"]

_SERVER = ("fastapi", "uvicorn", "redis", "rq", "pydantic_settings", "pyarrow")
_ENGINE = ("torch", "numpy", "scipy", "pyarrow", "safetensors")
NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "example": ("worker", _ENGINE),
    "correct": ("worker", _ENGINE),
    "serve": ("server", _SERVER),
    "worker": ("worker", (*_ENGINE, "redis", "rq", "pydantic_settings")),
    "worker-health": ("worker", ("redis", "rq", "pydantic_settings")),
    "demo": ("all", (*_SERVER, *_ENGINE)),
}
"""Command → (the extra providing it, modules it cannot run without)."""


def missing_extra(command: str) -> str | None:
    """Why ``command`` cannot run here (naming the extra to install), or None when it can."""
    extra, modules = NEEDS.get(command, ("", ()))
    absent = [name for name in modules if importlib.util.find_spec(name) is None]
    if not absent:
        return None
    return (f"`softunlearn {command}` needs the [{extra}] extra ({', '.join(absent)} not installed): "
            f"pip install 'softunlearn[{extra}]'" + (" (install torch==2.13.0 first, from the index "
                                                     "for your CPU or CUDA)" if "torch" in absent else ""))


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="softunlearn",
        description="Correct trained classifiers for fairness and robustness by soft-weighted unlearning.",
    )
    parser.add_argument("--version", action="version",
                        version=f"softunlearn {__version__} (API {API_VERSION})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    engine_commands.register(sub)
    service_commands.register(sub)
    client_commands.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    args.own_process = argv is None  # the process is this command (workers.cli.heap)
    why = missing_extra(args.command)
    if why is not None:
        print(f"error: {why}", file=sys.stderr)
        return EXIT_BAD_INPUT
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
