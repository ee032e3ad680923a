"""The package by role: the base install is the thin client; extras bring the server and the
engine (the fresh-virtualenv check of the base install is tests/cli/test_submit.py)."""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from typing import Any

import pytest

from app.version import __version__
from tests.app.support import ROOT


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    loaded: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return loaded


def names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in requirements}


def test_the_base_install_is_light(project: dict[str, Any]) -> None:
    assert names(project["dependencies"]) == {"httpx", "pydantic", "tenacity"}


def test_the_extras_split_server_and_engine(project: dict[str, Any]) -> None:
    extras = project["optional-dependencies"]
    server = names(extras["server"])
    assert "torch" not in server and {"fastapi", "uvicorn", "redis", "rq"} <= server
    assert "torch==2.13.0" in extras["worker"]
    assert {"numpy", "scipy", "pyarrow", "pandas", "redis", "rq"} <= names(extras["worker"])
    assert extras["all"] == ["softunlearn[server,worker]"] and "softunlearn[all]" in extras["dev"]


def test_one_version_everywhere(project: dict[str, Any]) -> None:
    assert project["dynamic"] == ["version"]
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert tool["dynamic"]["version"] == {"attr": "app.version.__version__"}
    assert importlib.metadata.version("softunlearn") == __version__
