"""Service subcommands (serve, worker, demo) are registered here."""

from __future__ import annotations

import argparse

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the service subcommands to ``sub``."""
