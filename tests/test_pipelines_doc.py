"""docs/PIPELINES.md stays true: its GitHub Actions job is valid YAML whose `softunlearn submit`
line our parser accepts, its spec is a valid job spec, and its Airflow task compiles and
imports only names the thin client has."""

from __future__ import annotations

import ast
import json
import re
import shlex

import yaml

from tests.app.support import ROOT
from workers.cli.main import build_parser
from workers.engine.config import spec_from_dict

DOC = (ROOT / "docs" / "PIPELINES.md").read_text()


def block(language: str) -> str:
    (found,) = re.findall(rf"```{language}\n(.*?)```", DOC, flags=re.S)
    return str(found)


def test_the_github_job_runs_a_submit_line_the_cli_accepts() -> None:
    workflow = yaml.safe_load(block("yaml"))
    steps = workflow["jobs"]["correct"]["steps"]
    (step,) = [s for s in steps if "softunlearn submit" in s.get("run", "")]
    assert step["shell"] == "bash", "pipefail keeps submit's exit code through tee"
    command = shlex.split(step["run"].split("|")[0])
    args = build_parser().parse_args(command[1:])
    assert args.wait and args.out is not None and len(args.gate) == 2
    env = workflow["jobs"]["correct"]["env"]
    assert "SOFTUNLEARN_API_KEY" in env and "secrets." in env["SOFTUNLEARN_API_KEY"]
    assert any(s.get("if") == "always()" for s in steps), "the report is kept when gates fail"


def test_the_spec_is_a_valid_job_spec() -> None:
    spec_from_dict(json.loads(block("json")))


def test_the_airflow_task_compiles_and_its_client_imports_exist() -> None:
    tree = ast.parse(block("python"))
    ours = [node for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and node.module is not None and node.module.split(".")[0] in ("app", "workers")]
    assert ours
    for node in ours:
        module = __import__(node.module or "", fromlist=["_"])
        for alias in node.names:
            assert hasattr(module, alias.name), f"{node.module}.{alias.name}"
