"""docker-compose.yml describes the whole stack, and each part of it can really start.

Docker is not needed (CI has no engine): the file is parsed and checked for what
`docker compose up` would trip over, namely missing services, long-running services without a
health check, `depends_on` on unknown services or impossible conditions, bind mounts of paths
missing from the repo, settings that point at the wrong service or port, and an Envoy config
that is stale or that Envoy refuses (`envoy --mode validate`, the same version as the image).
The health-check commands are run for real against the process they probe. Where the
`docker compose` plugin is installed, `docker compose config -q` checks the file too.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from tests.harness.gateway import ROOT, envoy_binary, render, start_envoy, start_openclaw
from tests.harness.net import free_port
from tests.harness.quotaplane_server import start_serve

COMPOSE_FILE = ROOT / "docker-compose.yml"
REQUIRED = {"envoy", "quotaplane", "redis", "postgres", "openclaw", "prometheus", "grafana"}
ONE_SHOTS = {"migrate"}  # run to completion; the services that need them wait for that
ENVOY_CONFIG_IN_CONTAINER = "/etc/envoy/envoy.yaml"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
_VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


# --- reading the compose file ------------------------------------------------------------------


def load_compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default} and ${NAME:?error} with ``env`` (no other forms)."""

    def substitute(match: re.Match[str]) -> str:
        value = env.get(match["name"], "")
        if match["op"] == ":-":
            return value or match["arg"]
        if match["op"] == ":?" and not value:
            raise KeyError(f"{match['name']} is required: {match['arg']}")
        return value

    return _VARIABLE.sub(substitute, text)


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """depends_on in either syntax, as {service: condition}."""
    raw = service.get("depends_on", {})
    if isinstance(raw, list):
        return dict.fromkeys(raw, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in raw.items()}


def long_running(services: dict[str, dict[str, Any]]) -> list[str]:
    return [name for name in services if name not in ONE_SHOTS]


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount, short and long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":  # the source as compose resolves it by default
                mounts.append((interpolate(volume["source"], {}), volume["target"]))
        elif volume.startswith((".", "/", "~")):
            source, target = volume.split(":")[:2]
            mounts.append((source, target))
    return mounts


def container_ports(service: dict[str, Any]) -> set[int]:
    """Container side of every published port ("10000:10000", "127.0.0.1:80:8080", 8080)."""
    return {int(str(port).split(":")[-1].split("/")[0]) for port in service.get("ports", [])}


def envoy_config_path(services: dict[str, dict[str, Any]]) -> Path:
    for source, target in bind_mounts(services["envoy"]):
        if target == ENVOY_CONFIG_IN_CONTAINER:
            return (COMPOSE_FILE.parent / source).resolve()
    raise AssertionError(f"the envoy service mounts nothing at {ENVOY_CONFIG_IN_CONTAINER}")


def envoy_upstreams(config: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """cluster name -> (address, port) of its one endpoint."""
    upstreams = {}
    for cluster in config["static_resources"]["clusters"]:
        endpoint = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        address = endpoint["address"]["socket_address"]
        upstreams[cluster["name"]] = (address["address"], int(address["port_value"]))
    return upstreams


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# The variables docker-compose.yml requires (no defaults), as an operator exports them.
COMPOSE_TOKENS = {
    "QUOTAPLANE_ADMIN_TOKEN": "t",
    "QUOTAPLANE_SERVICE_TOKEN": "s",
    "QUOTAPLANE_BILLING_TOKEN": "b",
}


def quotaplane_env(
    services: dict[str, dict[str, Any]], service: str = "quotaplane"
) -> dict[str, str]:
    env = services[service]["environment"]
    assert isinstance(env, dict), f"{service}: environment as a mapping, please"
    return {key: interpolate(str(value), COMPOSE_TOKENS) for key, value in env.items()}


# --- services, health checks, dependencies, mounts ---------------------------------------------


def test_every_part_of_the_stack_is_a_service(services: dict[str, dict[str, Any]]) -> None:
    missing = (REQUIRED | ONE_SHOTS) - set(services)
    assert not missing


def test_every_long_running_service_has_a_health_check(services: dict[str, dict[str, Any]]) -> None:
    unchecked = []
    for name in long_running(services):
        check = services[name].get("healthcheck", {})
        test = check.get("test")
        if check.get("disable") or not test or test[0] not in ("CMD", "CMD-SHELL"):
            unchecked.append(name)
    assert not unchecked, f"no (enabled) health check: {unchecked}"


def test_long_running_services_restart_and_one_shots_do_not(
    services: dict[str, dict[str, Any]],
) -> None:
    assert {
        name: services[name].get("restart") for name in long_running(services)
    } == dict.fromkeys(long_running(services), "unless-stopped")
    assert {name: services[name].get("restart") for name in ONE_SHOTS} == dict.fromkeys(
        ONE_SHOTS, "no"
    )


def test_depends_on_names_services_that_can_meet_the_condition(
    services: dict[str, dict[str, Any]],
) -> None:
    problems = []
    for name, service in services.items():
        for needed, condition in depends_on(service).items():
            if needed not in services:
                problems.append(f"{name} -> {needed}: no such service")
            elif condition not in CONDITIONS:
                problems.append(f"{name} -> {needed}: unknown condition {condition}")
            elif condition == "service_healthy" and "healthcheck" not in services[needed]:
                problems.append(f"{name} -> {needed}: healthy, but it has no health check")
            elif condition == "service_completed_successfully" and needed not in ONE_SHOTS:
                problems.append(f"{name} -> {needed}: completed, but it runs for ever")
    assert not problems


def test_one_shots_are_awaited_by_the_services_that_need_them(
    services: dict[str, dict[str, Any]],
) -> None:
    awaited = {
        needed
        for service in services.values()
        for needed, condition in depends_on(service).items()
        if condition == "service_completed_successfully"
    }
    assert awaited == ONE_SHOTS
    assert depends_on(services["quotaplane"])["migrate"] == "service_completed_successfully"


def test_the_gateway_starts_after_what_it_routes_to_is_healthy(
    services: dict[str, dict[str, Any]],
) -> None:
    assert depends_on(services["envoy"]) == {
        "quotaplane": "service_healthy",
        "openclaw": "service_healthy",
    }


def test_every_bind_mounted_host_path_exists_in_the_repo(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    missing = [
        f"{name}: {source}"
        for name, service in services.items()
        for source, _ in bind_mounts(service)
        if not (COMPOSE_FILE.parent / source).exists()
    ]
    assert not missing
    named = {
        volume.split(":")[0]
        for service in services.values()
        for volume in service.get("volumes", [])
        if isinstance(volume, str) and not volume.startswith((".", "/", "~"))
    }
    assert named <= set(compose.get("volumes") or {}), "named volumes must be declared"


def test_only_the_entry_points_publish_ports(services: dict[str, dict[str, Any]]) -> None:
    # OpenClaw only behind Envoy (else the quota is bypassed), the stores only on the network.
    for name in ("openclaw", "redis", "postgres"):
        assert not services[name].get("ports"), f"{name} must not publish a port"


# --- settings -----------------------------------------------------------------------------------


def test_quotaplane_runs_on_the_stack_redis_and_postgres(
    services: dict[str, dict[str, Any]],
) -> None:
    env = quotaplane_env(services)
    redis, database = (
        urlsplit(env["QUOTAPLANE_REDIS_URL"]),
        urlsplit(env["QUOTAPLANE_DATABASE_URL"]),
    )
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
    assert (database.scheme, database.hostname, database.port) == ("postgresql", "postgres", 5432)
    postgres = services["postgres"]["environment"]
    assert database.username == postgres["POSTGRES_USER"]
    assert database.path == "/" + postgres["POSTGRES_DB"]
    assert database.password == interpolate(postgres["POSTGRES_PASSWORD"], {})
    # Migrates the database it serves from (the server adds only its own serving settings).
    assert quotaplane_env(services, "migrate").items() <= env.items()


@pytest.mark.parametrize("variable", sorted(COMPOSE_TOKENS))
def test_every_token_must_be_set_and_has_no_default(
    services: dict[str, dict[str, Any]], variable: str
) -> None:
    # No role is open on the published port: quotaplane refuses to start without each token.
    raw = services["quotaplane"]["environment"][variable]
    with pytest.raises(KeyError, match=variable):
        interpolate(raw, {})
    assert interpolate(raw, {variable: "s3cret"}) == "s3cret"
    assert "QUOTAPLANE_ALLOW_UNAUTHENTICATED" not in services["quotaplane"]["environment"]


def test_envoy_gets_the_service_token_at_start_not_from_the_checked_in_config(
    services: dict[str, dict[str, Any]],
) -> None:
    envoy = services["envoy"]
    assert interpolate(envoy["environment"]["QUOTAPLANE_SERVICE_TOKEN"], {
        "QUOTAPLANE_SERVICE_TOKEN": "s"}) == "s"  # fmt: skip
    placeholder = render.COMPOSE["SERVICE_TOKEN"]
    shipped = envoy_config_path(services).read_text(encoding="utf-8")
    # The shipped config uses the HTTP ext_authz, which needs no token; rendered for the gRPC
    # Check it carries the placeholder, which the container's command replaces at start.
    assert "Bearer" not in shipped and "http_service" in shipped
    grpc = render.render_compose(render.TEMPLATE, authz="grpc")
    assert f'"Bearer {placeholder}"' in grpc
    assert f"s|{placeholder}|$${{QUOTAPLANE_SERVICE_TOKEN}}|" in " ".join(envoy["command"])


def test_quotaplane_production_settings(services: dict[str, dict[str, Any]]) -> None:
    env = quotaplane_env(services)
    assert env["QUOTAPLANE_GRPC_ADDR"] == "0.0.0.0:50051"
    assert env["QUOTAPLANE_LOG_FORMAT"] == "json"
    assert env["QUOTAPLANE_METRICS_TENANT_LABELS"].startswith("top-")  # bounded label cardinality
    assert container_ports(services["quotaplane"]) == {50051}


def test_prometheus_scrapes_the_metrics_port_quotaplane_listens_on(
    services: dict[str, dict[str, Any]],
) -> None:
    host, _, port = quotaplane_env(services)["QUOTAPLANE_METRICS_ADDR"].rpartition(":")
    assert host == "0.0.0.0"  # reachable from the prometheus container
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "quotaplane"]
    # DNS service discovery of the service name: every replica under --scale is a target (a
    # static "quotaplane:9464" target reaches one replica per scrape, whichever DNS returns).
    assert "static_configs" not in job
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["quotaplane"] and discovery["type"] == "A"
    assert discovery["port"] == int(port)


QUOTAPLANE_IMAGE_USERS = ("openclaw", "quotaplane", "migrate")


def test_the_services_of_this_repo_share_one_image_built_once(
    services: dict[str, dict[str, Any]],
) -> None:
    images = {services[name].get("image") for name in QUOTAPLANE_IMAGE_USERS}
    assert len(images) == 1 and None not in images, images
    builders = [name for name in QUOTAPLANE_IMAGE_USERS if "build" in services[name]]
    assert builders == ["quotaplane"], builders
    for name in set(QUOTAPLANE_IMAGE_USERS) - {"quotaplane"}:
        assert services[name].get("pull_policy") == "never", name  # built here, never pulled


def test_a_plans_file_can_be_mounted_and_defaults_to_the_bundled_plans(
    services: dict[str, dict[str, Any]],
) -> None:
    plans_in_container = quotaplane_env(services)["QUOTAPLANE_PLANS"]
    mounts = dict((target, source) for source, target in bind_mounts(services["quotaplane"]))
    assert mounts[plans_in_container] == "./server/quotaplane/default_plans.yaml"
    (raw,) = [
        v["source"] for v in services["quotaplane"]["volumes"]
        if isinstance(v, dict) and v["target"] == plans_in_container
    ]  # fmt: skip
    assert interpolate(raw, {"QUOTAPLANE_PLANS_FILE": "./my.yaml"}) == "./my.yaml"


def test_migrate_retries_while_postgres_finishes_its_first_start(
    services: dict[str, dict[str, Any]],
) -> None:
    command = services["migrate"]["command"]
    assert command[:2] == ["db", "upgrade"] and float(flag(command, "--wait")) >= 30
    # During its first start the image runs initdb's server on the unix socket only: a check
    # over that socket reports ready before the real server listens on TCP.
    assert "-h 127.0.0.1" in services["postgres"]["healthcheck"]["test"][1]


# --- Envoy ---------------------------------------------------------------------------------------


def test_compose_uses_the_http_path_with_the_route_costs_of_the_envoy_config(
    services: dict[str, dict[str, Any]],
) -> None:
    env = quotaplane_env(services)
    assert env["QUOTAPLANE_AUTHZ_ROUTES"] == render.AUTHZ_ROUTES
    assert env["QUOTAPLANE_WORKERS"] == "auto"
    config = yaml.safe_load(envoy_config_path(services).read_text(encoding="utf-8"))
    assert "http_service" in json.dumps(config)


def test_compose_envoy_config_is_the_rendered_template(services: dict[str, dict[str, Any]]) -> None:
    path = envoy_config_path(services)
    assert path == render.COMPOSE_CONFIG
    assert path.read_text(encoding="utf-8") == render.render_compose(), (
        f"{path.relative_to(ROOT)} is stale: python envoy/render.py --compose --out "
        f"{path.relative_to(ROOT)}"
    )


def test_compose_envoy_config_passes_envoy_validate(services: dict[str, dict[str, Any]]) -> None:
    result = subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(envoy_config_path(services)),
            "--disable-hot-restart",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_routes_to_the_compose_services_on_their_ports(
    services: dict[str, dict[str, Any]],
) -> None:
    config = yaml.safe_load(envoy_config_path(services).read_text(encoding="utf-8"))
    grpc_port = int(quotaplane_env(services)["QUOTAPLANE_GRPC_ADDR"].rpartition(":")[2])
    http_port = int(quotaplane_env(services)["QUOTAPLANE_AUTHZ_HTTP_ADDR"].rpartition(":")[2])
    openclaw_port = int(flag(services["openclaw"]["command"], "--port"))
    assert envoy_upstreams(config) == {
        "quotaplane": ("quotaplane", grpc_port),
        "quotaplane_http": ("quotaplane", http_port),
        "openclaw": ("openclaw", openclaw_port),
    }
    listener = config["static_resources"]["listeners"][0]["address"]["socket_address"]
    assert listener["address"] == "0.0.0.0"
    assert container_ports(services["envoy"]) == {int(listener["port_value"])}


def test_envoy_image_is_the_version_that_validates_the_config(
    services: dict[str, dict[str, Any]],
) -> None:
    image, _, tag = services["envoy"]["image"].partition(":")
    assert image == "envoyproxy/envoy"
    # The non-distroless image: its health check needs bash.
    assert re.fullmatch(r"v\d+\.\d+\.\d+", tag), f"pin a release, not {tag!r}"
    version = subprocess.run(
        [envoy_binary(), "--version"], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    match = re.search(r"/(\d+\.\d+\.\d+)/", version)
    assert match, version
    assert tag == f"v{match[1]}", f"compose runs Envoy {tag}, the tests validate with {match[1]}"


# --- the image -----------------------------------------------------------------------------------


def dockerfile_copies() -> set[str]:
    sources = set()
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        words = shlex.split(line) if line.startswith(("COPY ", "ADD ")) else []
        sources.update(word.rstrip("/") for word in words[1:-1] if not word.startswith("--"))
    return sources


def dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(prefix, pattern.removeprefix("**/"))
        for pattern in patterns
        for prefix in prefixes
    )


def test_the_image_contains_what_the_compose_services_run(
    services: dict[str, dict[str, Any]],
) -> None:
    copied = dockerfile_copies()
    script = services["openclaw"]["entrypoint"][1]
    assert script == "envoy/openclaw.py" and (ROOT / script).is_file()
    for needed in ("pyproject.toml", "README.md", "server", "clients", script):
        assert any(needed == src or needed.startswith(src + "/") for src in copied), needed
        assert not dockerignored(needed), f".dockerignore keeps {needed} out of the image"


def test_the_build_context_leaves_out_local_state() -> None:
    for local in (".venv/bin/python", ".git/HEAD", ".data/admin-token", "server/x/__pycache__/a"):
        assert dockerignored(local), local


# --- the health checks, run against what they probe --------------------------------------------


def probe_argv(service: dict[str, Any], replace: tuple[str, str] | None = None) -> list[str]:
    """The health check as a local command: ports as given, programs from this environment."""
    kind, *argv = service["healthcheck"]["test"]
    if kind == "CMD-SHELL":
        argv = ["sh", "-c", argv[0]]
    if replace:
        assert any(replace[0] in arg for arg in argv), f"the probe does not use {replace[0]}"
        argv = [arg.replace(*replace) for arg in argv]
    return local_command(argv)


def local_command(argv: list[str]) -> list[str]:
    """python is this interpreter and quotaplane this environment's entry point, as in the image."""
    programs = {
        "python": sys.executable,
        "quotaplane": str(Path(sys.executable).parent / "quotaplane"),
    }
    return [programs.get(argv[0], argv[0]), *argv[1:]]


def dockerfile_healthcheck() -> list[str]:
    """The image's HEALTHCHECK command (exec form), as the local command it stands for."""
    checks = [
        line for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.startswith("HEALTHCHECK ")
    ]  # fmt: skip
    assert len(checks) == 1, checks
    _, _, command = checks[0].partition(" CMD ")
    return local_command(json.loads(command))


def run_probe(argv: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.run(
        argv, capture_output=True, timeout=20, env={**os.environ, **(env or {})}
    ).returncode


@pytest.mark.timeout(90)
@pytest.mark.parametrize("source", ["docker-compose.yml", "Dockerfile"])
def test_quotaplane_health_check_passes_on_a_serving_server(
    services: dict[str, dict[str, Any]], tmp_path: Path, source: str
) -> None:
    argv = (
        dockerfile_healthcheck() if source == "Dockerfile" else probe_argv(services["quotaplane"])
    )
    nothing = {"QUOTAPLANE_GRPC_ADDR": f"0.0.0.0:{free_port()}"}
    assert run_probe(argv, nothing) != 0
    server = start_serve(tmp_path)
    with server.process:
        # The probe reads the port from the same setting the server listens on.
        assert run_probe(argv, {"QUOTAPLANE_GRPC_ADDR": f"0.0.0.0:{server.port}"}) == 0


def test_the_one_shot_migrate_container_does_not_inherit_the_servers_health_check(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ONE_SHOTS:
        assert services[name].get("healthcheck") == {"disable": True}, name


@pytest.mark.timeout(60)
def test_openclaw_health_check_passes_on_a_running_openclaw(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    port = flag(services["openclaw"]["command"], "--port")
    assert run_probe(probe_argv(services["openclaw"], (f":{port}/", f":{free_port()}/"))) != 0
    process, running = start_openclaw(tmp_path)
    with process:
        assert run_probe(probe_argv(services["openclaw"], (f":{port}/", f":{running}/"))) == 0


@pytest.mark.timeout(60)
def test_envoy_health_check_passes_on_a_live_envoy(
    services: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    config = yaml.safe_load(envoy_config_path(services).read_text(encoding="utf-8"))
    admin = config["admin"]["address"]["socket_address"]
    compose_admin = f"{admin['address']}/{admin['port_value']}"  # bash's /dev/tcp/HOST/PORT
    assert (
        run_probe(probe_argv(services["envoy"], (compose_admin, f"127.0.0.1/{free_port()}"))) != 0
    )
    process, _ = start_envoy(tmp_path, free_port(), free_port(), fail_open=False)
    with process:
        live = next(tmp_path.glob("envoy-*.admin")).read_text().strip().replace(":", "/")
        assert run_probe(probe_argv(services["envoy"], (compose_admin, live))) == 0


# --- docker compose itself, where installed -----------------------------------------------------


def docker_compose_version() -> str | None:
    try:
        result = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def test_docker_compose_accepts_the_file() -> None:
    if docker_compose_version() is None:
        pytest.skip("the docker compose plugin is not installed (`docker compose version` fails)")
    argv = ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "QUOTAPLANE_ADMIN_TOKEN"}
    ok = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                        env={**env, **COMPOSE_TOKENS})  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    unset = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert unset.returncode != 0 and "QUOTAPLANE_ADMIN_TOKEN" in unset.stderr
