"""Deployment files read as Docker would (no Docker here), and the Redis password they rely on.

The Dockerfile is parsed into stages, each target's instructions followed through the stages it
is built ``FROM``; docker-compose.yml is loaded with PyYAML (merge keys included) and its
interpolations are applied the way Compose applies them. The password tests run a real
``redis-server`` with ``requirepass``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from pydantic import SecretStr, ValidationError
from redis import Redis
from redis.connection import ConnectionPool
from redis.exceptions import AuthenticationError, RedisError

from tests.app.support import ROOT
from tests.private_redis import private_redis
from workers.cli.main import build_parser
from workers.cli.service_commands import run_worker_command, run_worker_health_command
from workers.settings import ServiceSettings

TORCH = "torch==2.13.0"
CPU_INDEX = "https://download.pytorch.org/whl/cpu"
CUDA_INDEX = "https://download.pytorch.org/whl/cu126"
NASTY_PASSWORDS = ["p@ss", "a:b", "x/y", "h#sh", "100%", "%41", "with space", "all @:/#%? of them",
                   "ünï€ode", "q?x=1&y"]


# --- Dockerfile -------------------------------------------------------------------------------

@dataclass
class Stage:
    """One ``FROM`` of a Dockerfile and its instructions, as ``(KEYWORD, arguments)``."""

    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def _logical_lines(text: str) -> Iterator[str]:
    """Instructions with their ``\\`` continuations joined; comment lines dropped (as Docker does)."""
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield pending + line
        pending = ""
    assert not pending, "a dangling line continuation at the end of the Dockerfile"


def parse_dockerfile(text: str) -> list[Stage]:
    stages: list[Stage] = []
    for line in _logical_lines(text):
        keyword, _, args = line.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            words = args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else str(len(stages))
            stages.append(Stage(name=name, base=words[0]))
        elif stages:
            stages[-1].instructions.append((keyword, args.strip()))
        else:
            assert keyword == "ARG", f"{keyword} before the first FROM"
    return stages


def target_instructions(stages: list[Stage], target: str) -> list[tuple[str, str]]:
    """What building ``--target target`` runs, from the first stage of its chain; ARGs resolved."""
    by_name = {stage.name: stage for stage in stages}
    chain: list[Stage] = []
    name = target
    while name in by_name:
        chain.insert(0, by_name[name])
        name = by_name[name].base
    resolved: list[tuple[str, str]] = []
    defaults: dict[str, str] = {}
    for stage in chain:
        for keyword, args in stage.instructions:
            if keyword == "ARG" and "=" in args:
                key, _, value = args.partition("=")
                defaults[key] = value
            for key, value in defaults.items():
                args = args.replace(f"${{{key}}}", value).replace(f"${key}", value)
            resolved.append((keyword, args))
    return resolved


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def _runs(instructions: list[tuple[str, str]]) -> list[str]:
    return [args for keyword, args in instructions if keyword == "RUN"]


def _torch_install(runs: list[str]) -> tuple[int, str]:
    """Index of the RUN installing torch, and its index URL."""
    (index,) = [i for i, run in enumerate(runs) if TORCH in shlex.split(run)]
    words = shlex.split(runs[index])
    return index, words[words.index("--index-url") + 1]


APP_WHEEL = '"$(ls /tmp/wheels/softunlearn-*.whl)'


def _app_install(runs: list[str], extra: str = "all,mlflow") -> int:
    """Index of the RUN installing the app's wheel with ``extra``; with the engine it must pin
    the installed torch first."""
    (index,) = [i for i, run in enumerate(runs) if APP_WHEEL in run]
    run = runs[index]
    assert f'{APP_WHEEL}[{extra}]"' in run, run
    if extra != "server":
        freeze = run.index("pip freeze | grep -i '^torch==' > /tmp/torch-constraint.txt")
        assert freeze < run.index(f"pip install --constraint /tmp/torch-constraint.txt {APP_WHEEL}"), run
    return index


def test_dockerfile_has_a_cpu_default_target_and_a_gpu_target(stages: list[Stage]) -> None:
    names = [stage.name for stage in stages]
    assert {"app-wheel", "base", "api", "cpu", "gpu"} <= set(names)
    assert names[-1] == "cpu", "a plain `docker build` must give the CPU image"
    by_name = {stage.name: stage for stage in stages}
    assert by_name["cpu"].base == by_name["gpu"].base == by_name["api"].base == "base"
    wheel_runs = _runs(by_name["app-wheel"].instructions)
    assert wheel_runs == ["pip wheel --no-deps --wheel-dir /wheels ."], "the app is built once, as a wheel"


@pytest.mark.parametrize(("target", "index_url"), [("cpu", CPU_INDEX), ("gpu", CUDA_INDEX)])
def test_each_target_installs_its_torch_wheel_before_the_app(stages: list[Stage], target: str,
                                                             index_url: str) -> None:
    instructions = target_instructions(stages, target)
    runs = _runs(instructions)
    torch_at, url = _torch_install(runs)
    assert url == index_url
    assert torch_at < _app_install(runs)
    every_url = " ".join(runs)
    other = CUDA_INDEX if target == "cpu" else CPU_INDEX
    assert other not in every_url and ("/whl/cu" in every_url) == (target == "gpu")
    assert not any(re.search(r"pip install[^&]*\s\.(\s|$)", run) for run in runs), \
        "`pip install .` without the torch constraint could replace torch"
    assert ("COPY", "--from=app-wheel /wheels /tmp/wheels") in instructions


@pytest.mark.parametrize("target", ["cpu", "gpu"])
def test_each_target_runs_as_a_user_and_keeps_the_api_healthcheck(stages: list[Stage], target: str) -> None:
    instructions = target_instructions(stages, target)
    keywords = [keyword for keyword, _ in instructions]
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN"), \
        "installs run as root, then the image switches to its user"
    (healthcheck,) = [args for keyword, args in instructions if keyword == "HEALTHCHECK"]
    assert "http://127.0.0.1:8000/healthz" in healthcheck and "--timeout=" in healthcheck
    (cmd,) = [args for keyword, args in instructions if keyword == "CMD"]
    assert yaml.safe_load(cmd) == ["softunlearn", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert ("EXPOSE", "8000") in instructions and ("VOLUME", '["/data/store"]') in instructions


def test_the_api_target_installs_the_server_extra_without_torch(stages: list[Stage]) -> None:
    instructions = target_instructions(stages, "api")
    runs = _runs(instructions)
    _app_install(runs, extra="server")
    assert not any(TORCH in shlex.split(run) or "torch" in run for run in runs)
    assert ("COPY", "--from=app-wheel /wheels /tmp/wheels") in instructions
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (cmd,) = [args for keyword, args in instructions if keyword == "CMD"]
    assert yaml.safe_load(cmd) == ["softunlearn", "serve", "--host", "0.0.0.0", "--port", "8000"]


def test_the_gpu_target_exposes_the_driver_to_cuda(stages: list[Stage]) -> None:
    env = " ".join(args for keyword, args in target_instructions(stages, "gpu") if keyword == "ENV")
    assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in env


# --- docker-compose.yml -----------------------------------------------------------------------

_INTERPOLATION = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?:(:?[?-])([^}]*))?\}")


def interpolate(value: Any, variables: dict[str, str]) -> Any:
    """Compose's ``${VAR}`` / ``${VAR:?message}`` / ``${VAR:-default}`` substitution, on every
    string in ``value`` (a missing variable without a default is a KeyError)."""
    if isinstance(value, str):
        def substitute(match: re.Match[str]) -> str:
            name, kind, default = match.group(1), match.group(2), match.group(3)
            if kind in (":-", "-") and not variables.get(name):
                return default or ""
            return variables[name]

        return _INTERPOLATION.sub(substitute, value)
    if isinstance(value, list):
        return [interpolate(item, variables) for item in value]
    if isinstance(value, dict):
        return {key: interpolate(item, variables) for key, item in value.items()}
    return value


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _workers(services: dict[str, Any]) -> dict[str, Any]:
    return {name: s for name, s in services.items() if s.get("command", [None, None])[1:2] == ["worker"]}


SERVICES = ("api", "worker", "gpu-worker")
S3_VARIABLES = {"S3_ACCESS_KEY": "minio-user", "S3_SECRET_KEY": "minio-secret-key"}


def test_compose_services_and_redis(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"api", "worker", "gpu-worker", "redis", "minio", "minio-init"} <= set(services)
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert "--requirepass ${REDIS_PASSWORD:?" in redis_cmd and "ports" not in services["redis"]
    assert "$$REDIS_PASSWORD" in " ".join(services["redis"]["healthcheck"]["test"])
    for name in SERVICES:
        service = services[name]
        assert service["command"][0] == "softunlearn"
        env = service["environment"]
        assert {"REDIS_URL", "SOFTUNLEARN_REDIS_PASSWORD", "SOFTUNLEARN_STORE",
                "SOFTUNLEARN_API_KEYS"} <= set(env)
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["api"]["command"][1] == "serve" and "healthcheck" not in services["api"], \
        "the API keeps the image's /healthz check"
    assert set(compose["volumes"]) >= {"minio-data", "redis-data"}


def test_api_and_workers_share_only_the_s3_store_never_a_volume(compose: dict[str, Any]) -> None:
    """Every service reaches the MinIO bucket that minio-init created, with MinIO's credentials;
    none mounts a volume (so a worker may run on any host that reaches MinIO and Redis)."""
    services = compose["services"]
    init = " ".join(services["minio-init"]["command"])
    for name in SERVICES:
        service = services[name]
        env = interpolate(service["environment"], {"REDIS_PASSWORD": "p", "SOFTUNLEARN_API_KEYS": "acme:k",
                                                   **S3_VARIABLES})
        assert "volumes" not in service, f"{name} must not need a shared disk"
        bucket = env["SOFTUNLEARN_STORE"].removeprefix("s3://").split("/")[0]
        assert env["SOFTUNLEARN_STORE"].startswith("s3://")
        assert f"mc mb --ignore-existing store/{bucket}" in init, "minio-init makes the store's bucket"
        assert env["SOFTUNLEARN_S3_ENDPOINT_URL"] == "http://minio:9000"
        assert (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]) == ("minio-user", "minio-secret-key")
        assert service["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    minio = services["minio"]
    assert minio["environment"]["MINIO_ROOT_USER"].startswith("${S3_ACCESS_KEY:?")
    assert minio["environment"]["MINIO_ROOT_PASSWORD"].startswith("${S3_SECRET_KEY:?")
    assert "ports" not in minio and any(v.endswith(":/data") for v in minio["volumes"])
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert services["minio-init"]["restart"] == "no"


def test_compose_builds_each_service_from_its_dockerfile_target(compose: dict[str, Any],
                                                                stages: list[Stage]) -> None:
    services = compose["services"]
    names = {stage.name for stage in stages}
    targets = {name: services[name]["build"]["target"] for name in ("api", "worker", "gpu-worker")}
    assert targets == {"api": "api", "worker": "cpu", "gpu-worker": "gpu"}
    assert set(targets.values()) <= names
    assert len({services[name]["image"] for name in targets}) == 3


def test_the_cpu_worker_runs_by_default_and_the_gpu_worker_only_with_its_profile(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert all("profiles" not in services[name] for name in ("api", "worker", "redis"))
    gpu = services["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    assert services["worker"]["command"] == ["softunlearn", "worker", "--queues", "cpu"]
    assert services["worker"]["environment"]["SOFTUNLEARN_DEVICE"] == "cpu"
    assert gpu["command"] == ["softunlearn", "worker", "--queues", "gpu"], "GPU jobs only"
    assert gpu["environment"]["SOFTUNLEARN_DEVICE"] == "cuda"


def test_every_worker_has_the_worker_health_check_on_its_own_queues(compose: dict[str, Any]) -> None:
    workers = _workers(compose["services"])
    assert set(workers) == {"worker", "gpu-worker"}
    parser = build_parser()
    for name, service in workers.items():
        check = service["healthcheck"]
        test = check["test"]
        assert test[:3] == ["CMD", "softunlearn", "worker-health"], name
        worker_args = parser.parse_args(service["command"][1:])
        health_args = parser.parse_args(test[2:])
        assert worker_args.handler is run_worker_command and health_args.handler is run_worker_health_command
        assert health_args.queues == worker_args.queues, f"{name}: the check must expect the worker's queues"
        assert {"interval", "timeout", "retries", "start_period"} <= set(check), name
        assert not check.get("disable", False)


def test_no_password_is_written_into_a_url(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        for key, value in (env.items() if isinstance(env, dict) else []):
            if isinstance(value, str) and "://" in value:
                assert "@" not in value and "$" not in value and urlsplit(value).password is None, (name, key)
        if name in SERVICES:
            assert env["SOFTUNLEARN_REDIS_PASSWORD"].startswith("${REDIS_PASSWORD:?"), name


@pytest.mark.parametrize("password", NASTY_PASSWORDS)
def test_the_compose_environment_gives_the_services_a_url_with_the_exact_password(
        compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, password: str) -> None:
    env = interpolate(compose["services"]["worker"]["environment"],
                      {"REDIS_PASSWORD": password, "SOFTUNLEARN_API_KEYS": "acme:0123456789abcdef",
                       **S3_VARIABLES})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = ServiceSettings()
    assert (settings.store, settings.s3_endpoint_url) == ("s3://softunlearn/store", "http://minio:9000")
    parsed = ConnectionPool.from_url(settings.redis_url).connection_kwargs
    assert (parsed["host"], parsed["port"], parsed["db"], parsed["password"]) == ("redis", 6379, 0, password)
    redis_argv = interpolate(compose["services"]["redis"]["command"], {"REDIS_PASSWORD": password})
    assert redis_argv[redis_argv.index("--requirepass") + 1] == password  # raw, one argument


# --- the Redis password against a real redis-server --------------------------------------------

@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with private_redis(tmp_path_factory.mktemp("redis"), password="initial") as server:
        port = server.port
        yield port


def _url(url: str, password: str) -> str:
    """``redis_url`` of settings with ``url`` and the password setting."""
    return ServiceSettings(redis_url=url, redis_password=SecretStr(password)).redis_url


def _require(port: int, old: str, new: str) -> None:
    Redis(host="127.0.0.1", port=port, password=old).config_set("requirepass", new)


@pytest.fixture
def password(request: pytest.FixtureRequest, redis_port: int) -> Iterator[str]:
    value: str = request.param
    _require(redis_port, "initial", value)
    yield value
    _require(redis_port, value, "initial")


@pytest.mark.parametrize("password", NASTY_PASSWORDS, indirect=True)
def test_the_url_built_from_the_password_setting_authenticates(redis_port: int, password: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    base = f"redis://127.0.0.1:{redis_port}/0"
    assert Redis.from_url(_url(base, password)).ping()
    monkeypatch.setenv("REDIS_URL", base)
    monkeypatch.setenv("SOFTUNLEARN_REDIS_PASSWORD", password)
    assert Redis.from_url(ServiceSettings().redis_url).ping()
    assert Redis.from_url(_url(f"redis://default@127.0.0.1:{redis_port}/0", password)).ping()
    with pytest.raises(AuthenticationError):
        Redis.from_url(_url(base, password + "x")).ping()


@pytest.mark.parametrize("password", ["x/y", "h#sh", "%41"], indirect=True)
def test_a_raw_password_in_the_url_does_not_authenticate(redis_port: int, password: str) -> None:
    """What the setting fixes: these passwords break a URL they are pasted into."""
    with pytest.raises((RedisError, ValueError)):
        Redis.from_url(f"redis://:{password}@127.0.0.1:{redis_port}/0", socket_connect_timeout=2).ping()


def test_redis_url_alone_keeps_working_and_one_password_source_is_enforced(redis_port: int) -> None:
    url = f"redis://:initial@127.0.0.1:{redis_port}/0"
    assert ServiceSettings(redis_url=url).redis_url == url
    assert Redis.from_url(ServiceSettings(redis_url=url).redis_url).ping()
    assert _url(url, "initial") == url
    with pytest.raises(ValidationError, match="SOFTUNLEARN_REDIS_PASSWORD"):
        _url(url, "another")
    secret = ServiceSettings(redis_url=f"redis://127.0.0.1:{redis_port}/0",
                             redis_password=SecretStr("s3cr3t-value"))
    assert "s3cr3t-value" not in repr(secret.redis_password)


def test_the_settings_table_documents_the_password() -> None:
    assert "| `SOFTUNLEARN_REDIS_PASSWORD` |" in (ROOT / "docs" / "SERVICE.md").read_text()


def test_dockerfile_path_is_the_one_compose_builds(compose: dict[str, Any]) -> None:
    for name in ("api", "worker", "gpu-worker"):
        assert compose["services"][name]["build"]["context"] == "."
    assert Path(ROOT / "Dockerfile").is_file()
