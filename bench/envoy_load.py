"""Gateway load benchmark: Envoy + quotaplane ext_authz against Envoy + an always-allow ext_authz.

One run starts one OpenClaw sample upstream (envoy/openclaw.py) and two Envoys from the shipped
config (envoy/envoy.yaml, fail closed, ``--concurrency 1``), identical but for the ext_authz
cluster's port:

- quotaplane: ``quotaplane serve`` on Redis (--redis-url, its own key prefix) and a fresh SQLite
  ledger, with one tenant on a plan with a huge monthly quota and one API key;
- trivial:    tests/e2e/trivial_authz.py, which admits everything with the same header
  mutations. It runs on uvloop, as ``quotaplane serve`` does, so the loop is not what differs.

h2load (Debian package nghttp2-client) sends ``POST /v1/rate`` with a JSON body and the
``x-api-key`` header to each Envoy listener (HTTP/1.1 by default, ``--h2`` for h2c):

1. peak: closed loop, ``--connections`` x ``--streams`` requests in flight, for ``--duration``;
2. half load: open loop, both arms at the same rate: half of the lower of the two peaks
   (``--half-of trivial`` takes half of the trivial peak instead).

Each pass runs ``--rounds`` times per arm, the arms alternating (and taking turns to go first),
so that a slow spell of this shared machine lands on both arms instead of deciding the
comparison; the figures pool the rounds (mean rate, percentiles over every request) and the
per-round ratios and added p99s show the spread.

It prints requests/s, p50/p99/p99.9 latency (h2load's per-request log), non-2xx responses, the
quotaplane/trivial ratio at peak, the p99 quotaplane adds at half load, where the CPU went
during each peak pass, and a decision check: quotaplane's Redis counter must equal the 2xx
responses h2load got through the quotaplane Envoy (every admitted request was a real, counted
decision), and Envoy's ext_authz counters must show no errors or denials.

Process placement (``--placement``, 2-core machine): ``split`` (default) runs each ext_authz
server alone on the last CPU and Envoy, OpenClaw and h2load on the others; ``none`` leaves it
to the scheduler. Redis is not ours to pin. Not a test: it reports figures, asserts nothing.

    .venv/bin/python bench/envoy_load.py --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
from h2load import Result, pooled, run, with_cpu
from workspace import h2load_missing, new_workspace

from quotaplane.domain.tenants.api_keys import ApiKeyAdmin
from quotaplane.domain.windows import Window, window_start
from quotaplane.storage.redis import keys
from quotaplane.storage.sql.api_keys import SqlApiKeyStore
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tenants import SqlTenantStore

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.harness: the gateway's process helpers, shared with e2e
from tests.harness.gateway import (  # noqa: E402
    TRIVIAL_AUTHZ,
    admin_get,
    start_announcing,
    start_envoy,
    start_openclaw,
)
from tests.harness.processes import ManagedProcess  # noqa: E402
from tests.harness.quotaplane_server import start_serve  # noqa: E402

ARMS = ("trivial", "quotaplane")
PATH = "/v1/rate"
RATE_BODY = {"type": "domain", "value": "example.com"}
WARM_UP = 1000
BUSY = 20  # % of one core used by others during a peak pass that makes it worth a warning
PLANS = "plans:\n  bench:\n    metrics:\n      requests: {limits: {month: 1000000000000}}\n"
# trivial_authz.py under uvloop: installing the policy makes its asyncio.run() use uvloop.
UVLOOP_RUN = (
    "import runpy, sys, uvloop; uvloop.install(); sys.argv = sys.argv[1:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


@dataclass
class Arm:
    name: str
    authz: ManagedProcess
    envoy: ManagedProcess
    port: int  # the Envoy listener
    admin_file: Path
    passes: dict[str, Result] = field(default_factory=dict)  # warm, and the pooled rounds
    rounds: dict[str, list[Result]] = field(default_factory=lambda: {"peak": [], "half": []})
    cpu: dict[str, float] = field(default_factory=dict)  # % of one core, mean of the peak passes

    def envoy_stats(self) -> dict[str, int]:
        text = admin_get(self.admin_file, "/stats?filter=ext_authz|upstream_rq_2xx") or ""
        return {
            name: int(value)
            for name, value in re.findall(r"^(\S+): (\d+)$", text, flags=re.MULTILINE)
        }


# --- set-up ----------------------------------------------------------------------------------


async def seed(database_url: str) -> tuple[str, str]:
    """A tenant on the bench plan and an API key for it: (tenant id, secret)."""
    engine = create_async_engine_for(database_url)
    try:
        tenants = SqlTenantStore(engine)
        tenant = await tenants.create(name="bench", plan="bench")
        _, secret = await ApiKeyAdmin(SqlApiKeyStore(engine), tenants).create(
            tenant_id=tenant.id, name="bench"
        )
        return tenant.id, secret
    finally:
        await engine.dispose()


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


def placement(name: str) -> tuple[set[int] | None, set[int] | None]:
    """(CPUs of the ext_authz servers, CPUs of everything else we start)."""
    cpus = sorted(os.sched_getaffinity(0))
    if name == "none" or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def start_quotaplane(
    work: Path, redis_url: str, prefix: str, database_url: str
) -> tuple[ManagedProcess, int]:
    server = start_serve(
        work,
        redis_url=redis_url,
        database_url=database_url,
        key_prefix=prefix,
        plans_path=work / "plans.yaml",
        # The product's defaults, not the test harness's relaxed Redis timeout.
        env={
            "QUOTAPLANE_REDIS_TIMEOUT": "100ms",
            "QUOTAPLANE_METRICS_ADDR": "off",
            "QUOTAPLANE_LOG_LEVEL": "WARNING",
        },
        name="quotaplane",
    )
    return server.process, server.port


def start_trivial(work: Path) -> tuple[ManagedProcess, int]:
    argv = [sys.executable, "-c", UVLOOP_RUN, str(TRIVIAL_AUTHZ), "--host", "127.0.0.1",
            "--port", "0"]  # fmt: skip
    return start_announcing(argv, work / "trivial-authz.log", r"listening on [^:]+:(\d+)")


# --- measuring --------------------------------------------------------------------------------


def redis_pid(client: redis.Redis) -> int | None:
    with contextlib.suppress(redis.RedisError):
        return int(client.info("server")["process_id"])
    return None


def load(
    arm: Arm,
    work: Path,
    args: argparse.Namespace,
    secret: str,
    label: str,
    *,
    count: int = 0,
    rps: float = 0,
) -> Result:
    body = work / "rate.json"
    if not body.exists():
        body.write_text(json.dumps(RATE_BODY))
    if rps:  # open loop: h2load -r needs a request count; connections open 1/rate apart
        count = round(rps * args.duration)
    return run(
        f"http://127.0.0.1:{arm.port}{PATH}",
        body,
        work / f"{arm.name}-{label}.log",
        connections=args.connections,
        streams=args.streams,
        duration=args.duration,
        headers=("content-type: application/json", f"x-api-key: {secret}"),
        count=count,
        rps=rps,
        h1=not args.h2,
        stagger_ms=max(1, round(1000 / rps)) if rps else 0,
    )


def half_rate(arms: dict[str, Arm], half_of: str) -> float:
    """The one open-loop rate both arms get (see the module docstring)."""
    if half_of == "trivial":
        return arms["trivial"].passes["peak"].rps / 2
    return min(arm.passes["peak"].rps for arm in arms.values()) / 2


def alternating(arms: dict[str, Arm], rounds: int) -> Iterator[tuple[int, Arm]]:
    """(round, arm) for every pass: both arms each round, taking turns to go first."""
    order = list(arms.values())
    for number in range(rounds):
        for arm in order if number % 2 == 0 else reversed(order):
            yield number, arm


def mean_cpu(samples: list[dict[str, float]]) -> dict[str, float]:
    return {name: sum(sample[name] for sample in samples) / len(samples) for name in samples[0]}


def measure(
    arms: dict[str, Arm],
    pids: dict[str, int | None],
    work: Path,
    args: argparse.Namespace,
    secret: str,
    load_cpus: set[int] | None,
) -> float:
    """Warm-up, then the peak and half-load rounds, alternating arms; returns the half-load
    rate."""
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    with on_cpus(load_cpus):
        for arm in arms.values():
            arm.passes["warm"] = load(arm, work, args, secret, "warm", count=WARM_UP)
        for number, arm in alternating(arms, args.rounds):
            peak = functools.partial(load, arm, work, args, secret, f"peak-{number}")
            own = {"envoy": arm.envoy.pid, "ext_authz": arm.authz.pid}
            result, used = with_cpu({**own, **pids}, peak)
            arm.rounds["peak"].append(result)
            cpu[arm.name].append(used)
        for arm in arms.values():
            arm.passes["peak"], arm.cpu = pooled(arm.rounds["peak"]), mean_cpu(cpu[arm.name])
        rate = half_rate(arms, args.half_of)
        for number, arm in alternating(arms, args.rounds):
            arm.rounds["half"].append(load(arm, work, args, secret, f"half-{number}", rps=rate))
        for arm in arms.values():
            arm.passes["half"] = pooled(arm.rounds["half"])
    return rate


# --- the run ------------------------------------------------------------------------------------


def start_gateway(
    stack: contextlib.ExitStack,
    work: Path,
    args: argparse.Namespace,
    prefix: str,
    database_url: str,
    cpus: tuple[set[int] | None, set[int] | None],
) -> tuple[dict[str, Arm], ManagedProcess]:
    authz_cpus, rest_cpus = cpus
    with on_cpus(rest_cpus):
        openclaw, openclaw_port = start_openclaw(work)
    stack.enter_context(openclaw)
    with on_cpus(authz_cpus):
        authz = {
            "trivial": start_trivial(work),
            "quotaplane": start_quotaplane(work, args.redis_url, prefix, database_url),
        }
    for process, _ in authz.values():
        stack.enter_context(process)
    arms = {}
    for name in ARMS:
        process, authz_port = authz[name]
        log_dir = work / name
        log_dir.mkdir()
        with on_cpus(rest_cpus):
            envoy, port = start_envoy(log_dir, openclaw_port, authz_port, fail_open=False)
        stack.enter_context(envoy)
        # start_envoy publishes the admin address in <log dir>/<name>.admin.
        arms[name] = Arm(name, process, envoy, port, log_dir / "envoy-fail-closed.admin")
    return arms, openclaw


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pass")
    parser.add_argument(
        "--rounds", type=int, default=3, help="passes per arm and load, alternating arms"
    )
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--streams", type=int, default=1, help="requests in flight per connection (h2c only)"
    )
    parser.add_argument("--h2", action="store_true", help="h2c to Envoy instead of HTTP/1.1")
    parser.add_argument("--placement", choices=("split", "none"), default="split")
    parser.add_argument(
        "--half-of",
        choices=("lower", "trivial"),
        default="lower",
        help="half-load rate: half of the lower peak (default) or of the trivial arm's peak",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    if not args.h2:
        args.streams = 1  # HTTP/1.1: no pipelining through Envoy, one request per connection
    return args


def main() -> int:
    args = parse_args()
    if h2load_missing():
        return 2
    space = new_workspace("qp-envoy-bench", PLANS)
    work, prefix, database_url = space.work, space.key_prefix, space.database_url
    tenant_id, secret = asyncio.run(seed(database_url))
    cpus = placement(args.placement)
    client = redis.Redis.from_url(args.redis_url)
    try:
        with contextlib.ExitStack() as stack:
            arms, openclaw = start_gateway(stack, work, args, prefix, database_url, cpus)
            shared = {"openclaw": openclaw.pid, "redis": redis_pid(client)}
            rate = measure(arms, shared, work, args, secret, cpus[1])
            stats = {name: arm.envoy_stats() for name, arm in arms.items()}
        month = int(window_start(Window.MONTH, datetime.now(UTC)).timestamp())
        counter = client.get(keys.counter_key(prefix, tenant_id, "requests", "month", month))
        report(arms, rate, int(counter or 0), stats, args, cpus)
    finally:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.unlink(key)
        client.close()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


# --- the report ---------------------------------------------------------------------------------


def row(name: str, result: Result) -> str:
    return (
        f"{name:<28} {result.rps:>8.0f} {result.p50:>7.2f} {result.p99:>7.2f} {result.p999:>8.2f}"
        f" {result.done - result.ok_2xx:>7d} {result.done:>8d}"
    )


def authz_stat(stats: dict[str, int], outcome: str) -> int:
    # http.<listener>.ext_authz.<filter>.<outcome>; the cluster.* copies would count twice.
    return sum(v for k, v in stats.items() if k.startswith("http.") and k.endswith(f".{outcome}"))


def report(
    arms: dict[str, Arm],
    rate: float,
    counter: int,
    stats: dict[str, dict[str, int]],
    args: argparse.Namespace,
    cpus: tuple[set[int] | None, set[int] | None],
) -> None:
    protocol = f"h2c -m {args.streams}" if args.h2 else "--h1"
    authz_cpus, rest_cpus = (",".join(map(str, sorted(c or ()))) for c in cpus)
    where = f"ext_authz on CPU {authz_cpus}, the rest on CPU {rest_cpus}" if cpus[0] else "none"
    print(
        f"h2load {protocol} -c {args.connections} -t 1, {args.rounds} x {args.duration}s "
        f"per arm and load, {os.cpu_count()} CPUs, Envoy --concurrency 1, placement: {where}"
    )
    print(f"{'pass':<28} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} "
          f"{'non-2xx':>7} {'done':>8}")  # fmt: skip
    for name, arm in arms.items():
        print(row(f"{name} peak", arm.passes["peak"]))
    for name, arm in arms.items():
        print(row(f"{name} half @ {rate:.0f}/s", arm.passes["half"]))
    trivial, quotaplane = arms["trivial"], arms["quotaplane"]
    ratio = quotaplane.passes["peak"].rps / trivial.passes["peak"].rps
    added = quotaplane.passes["half"].p99 - trivial.passes["half"].p99
    ratios = per_round(trivial, quotaplane, "peak", lambda t, q: f"{q.rps / t.rps:.2f}")
    addeds = per_round(trivial, quotaplane, "half", lambda t, q: f"{q.p99 - t.p99:.2f}")
    basis = "the trivial peak" if args.half_of == "trivial" else "the lower peak"
    print(f"ratio quotaplane/trivial at peak: {ratio:.2f} (target >= 0.70; rounds: {ratios})")
    print(
        f"p99 added at {rate:.0f} req/s (half of {basis}, both arms): {added:.2f} ms "
        f"(target <= 2 ms; rounds: {addeds})"
    )
    for name, arm in arms.items():
        # % of a core x 10^4 / (req/s) = CPU microseconds per request.
        per_request = 10_000 / arm.passes["peak"].rps
        shares = ", ".join(
            f"{k} {v:.0f}%" + ("" if k == "other" else f" ({v * per_request:.0f} us)")
            for k, v in arm.cpu.items()
        )
        print(f"CPU during {name} peak, % of one core (CPU us per request): {shares}")
        if arm.cpu["other"] > BUSY:
            print(f"  WARNING: {arm.cpu['other']:.0f}% of a core went to other work meanwhile")
    check_decisions(arms, counter, stats, args)


def per_round(
    trivial: Arm, quotaplane: Arm, kind: str, figure: Callable[[Result, Result], str]
) -> str:
    pairs = zip(trivial.rounds[kind], quotaplane.rounds[kind], strict=True)
    return " ".join(figure(t, q) for t, q in pairs)


def check_decisions(
    arms: dict[str, Arm], counter: int, stats: dict[str, dict[str, int]], args: argparse.Namespace
) -> None:
    for name, arm in arms.items():
        got = sum(result.ok_2xx for result in arm.passes.values())
        ok, denied, error = (authz_stat(stats[name], o) for o in ("ok", "denied", "error"))
        print(
            f"{name}: h2load 2xx {got}, Envoy ext_authz ok {ok} / denied {denied} / "
            f"error {error}, OpenClaw 2xx {stats[name].get('cluster.openclaw.upstream_rq_2xx', 0)}"
        )
    sent = sum(result.ok_2xx for result in arms["quotaplane"].passes.values())
    # A -D (peak) pass ends with up to connections x streams requests in flight: quotaplane
    # may have counted them while h2load no longer waited. More than that (per peak pass, plus
    # one pass's worth of margin), or fewer than the 2xx, is wrong.
    slack = (args.rounds + 1) * args.connections * args.streams
    errors = sum(authz_stat(stats[name], o) for name in ARMS for o in ("denied", "error"))
    verdict = "OK" if 0 <= counter - sent <= slack and errors == 0 else "MISMATCH"
    print(
        f"decision check: quotaplane Redis counter {counter}, 2xx through its Envoy {sent} "
        f"(cut-off slack {slack}), ext_authz denials/errors {errors} -> {verdict}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
