"""The arms of bench/envoy_load.py: one Envoy (``--concurrency 1``, fail closed, the shipped
config) per arm, differing only in the ext_authz behind it. Behind Envoy, ``upstream``: "direct"
(default) answers every route with Envoy's own direct_response, so the upstream costs nothing
and the arms differ only by their ext_authz (as perf-notes measured); "openclaw" sends the
requests on to the OpenClaw sample, a Python server that then caps every arm alike.

- quotaplane-http-1: ``quotaplane serve`` (1 worker), Envoy's HTTP ext_authz (the fast path);
- quotaplane-http-2: ``quotaplane serve --workers 2``, the same;
- quotaplane-grpc:   the quotaplane-http-1 server's gRPC Check (the alternative path);
- trivial-grpc:      tests/e2e/trivial_authz.py on uvloop, always allow;
- trivial-http:      bench/trivial_http_authz.py, always allow on a raw asyncio protocol;
- no-authz:          the same Envoy config without the ext_authz filter.

The quotaplane servers share Redis (their own key prefix), the workspace's SQLite ledger and
one tenant; they run with the product's defaults (100 ms Redis timeout), not the tests'.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from h2load import Result
from workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.harness: the gateway's process helpers, shared with e2e
from tests.harness.gateway import (  # noqa: E402
    TRIVIAL_AUTHZ,
    admin_get,
    render,
    run_envoy,
    start_announcing,
    start_openclaw,
)
from tests.harness.net import free_port  # noqa: E402
from tests.harness.processes import ManagedProcess  # noqa: E402
from tests.harness.quotaplane_server import ServeProcess, start_serve  # noqa: E402
from tests.harness.tokens import SERVICE_TOKEN  # noqa: E402  the token start_serve runs with

QUOTAPLANE_ARMS = ("quotaplane-http-1", "quotaplane-http-2", "quotaplane-grpc")
# trivial_authz.py under uvloop: installing the policy makes its asyncio.run() use uvloop.
UVLOOP_RUN = (
    "import runpy, sys, uvloop; uvloop.install(); sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)
TRIVIAL_HTTP = Path(__file__).with_name("trivial_http_authz.py")


@dataclass
class Arm:
    name: str
    envoy: ManagedProcess
    port: int  # the Envoy listener
    admin_file: Path
    server_pids: list[int]  # the ext_authz server's processes (empty: no-authz)
    passes: dict[str, Result] = field(default_factory=dict)  # warm, and the pooled rounds
    rounds: dict[str, list[Result]] = field(default_factory=lambda: {"peak": [], "half": []})
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core, mean of the peak passes

    @property
    def decides(self) -> bool:
        return self.name in QUOTAPLANE_ARMS

    def envoy_stats(self) -> dict[str, int]:
        text = admin_get(self.admin_file, "/stats?filter=ext_authz|upstream_rq_2xx") or ""
        stats = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.isdigit():
                stats[name] = int(value)
        return stats


@contextlib.contextmanager
def on_cpus(cpus: set[int] | None) -> Iterator[None]:
    """Children started inside inherit this thread's CPU affinity: place them by placing us."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def children(pid: int | None) -> list[int]:
    if pid is None:
        return []
    with contextlib.suppress(OSError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


def _serve(space: Workspace, redis_url: str, name: str, workers: int) -> ServeProcess:
    env = {"QUOTAPLANE_REDIS_TIMEOUT": "100ms", "QUOTAPLANE_METRICS_ADDR": "off",
           "QUOTAPLANE_LOG_LEVEL": "WARNING", "QUOTAPLANE_WORKERS": str(workers)}  # fmt: skip
    server = start_serve(space.work, redis_url=redis_url, database_url=space.database_url,
                         key_prefix=space.key_prefix, plans_path=space.plans, env=env,
                         name=name, http_port=free_port())  # fmt: skip
    server.process.wait_for_port(server.http_port, timeout=60)
    return server


def _envoy(
    work: Path, name: str, upstream: int, authz: str, port: int, direct: bool
) -> tuple[Path, str]:
    """The shipped config for one arm; ``authz`` http, grpc or none."""
    port_name = "quotaplane_http_port" if authz == "http" else "quotaplane_port"
    text = render.render(render.TEMPLATE, listen_address="127.0.0.1", listen_port=0,
                         admin_port=0, openclaw_port=upstream,
                         authz="grpc" if authz == "none" else authz, service_token=SERVICE_TOKEN,
                         **({port_name: port} if port else {}))  # fmt: skip
    config = yaml.safe_load(text)
    manager = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
    if authz == "none":
        filters = manager["typed_config"]["http_filters"]
        filters[:] = [f for f in filters if f["name"] != "envoy.filters.http.ext_authz"]
    if direct:
        for host in manager["typed_config"]["route_config"]["virtual_hosts"]:
            for route in host["routes"]:
                if "route" in route:
                    del route["route"]
                    route["direct_response"] = {"status": 200, "body": {"inline_string": "{}"}}
    text = yaml.safe_dump(config)
    path = work / f"envoy-{name}.yaml"
    path.write_text(text)
    return path, name


def start_arms(
    stack: contextlib.ExitStack,
    space: Workspace,
    redis_url: str,
    cpus: tuple[set[int] | None, set[int] | None],
    *,
    direct: bool = True,
) -> dict[str, Arm]:
    """Every arm's server and Envoy, started and registered on ``stack`` to be stopped."""
    authz_cpus, rest_cpus = cpus
    work = space.work
    with on_cpus(rest_cpus):
        openclaw, upstream = start_openclaw(work)
    stack.enter_context(openclaw)
    with on_cpus(authz_cpus):
        one = _serve(space, redis_url, "quotaplane-1", 1)
        stack.enter_context(one.process)
        grpc_trivial, grpc_port = start_announcing(
            [sys.executable, "-c", UVLOOP_RUN, str(TRIVIAL_AUTHZ), "--host", "127.0.0.1",
             "--port", "0"], work / "trivial-grpc.log", r"listening on [^:]+:(\d+)")  # fmt: skip
        stack.enter_context(grpc_trivial)
        http_trivial, http_port = start_announcing(
            [sys.executable, str(TRIVIAL_HTTP), "--host", "127.0.0.1", "--port", "0"],
            work / "trivial-http.log", r"listening on [^:]+:(\d+)")  # fmt: skip
        stack.enter_context(http_trivial)
    two = _serve(space, redis_url, "quotaplane-2", 2)  # two workers: every CPU
    stack.enter_context(two.process)
    two_pids = [two.process.pid or 0, *children(two.process.pid)]
    servers = {
        "quotaplane-http-1": ("http", one.http_port, [one.process.pid or 0]),
        "quotaplane-http-2": ("http", two.http_port, two_pids),
        "quotaplane-grpc": ("grpc", one.port, [one.process.pid or 0]),
        "trivial-grpc": ("grpc", grpc_port, [grpc_trivial.pid or 0]),
        "trivial-http": ("http", http_port, [http_trivial.pid or 0]),
        "no-authz": ("none", 0, []),
    }
    arms = {}
    for name, (authz, port, pids) in servers.items():
        config, envoy_name = _envoy(work, name, upstream, authz, port, direct)
        with on_cpus(rest_cpus):
            envoy, listener = run_envoy(work, envoy_name, config)
        stack.enter_context(envoy)
        arms[name] = Arm(name, envoy, listener, work / f"{envoy_name}.admin", pids)
    return arms
