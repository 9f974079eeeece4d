"""Gateway load benchmark: the ext_authz paths behind the same Envoy, in one run.

The arms (bench/envoy_arms.py): quotaplane's HTTP ext_authz with 1 and 2 workers, quotaplane's
gRPC Check, an always-allow gRPC server, an always-allow HTTP server on a raw asyncio protocol,
and Envoy without ext_authz. h2load (Debian package nghttp2-client) sends ``POST /v1/rate``
with the API key to each arm's Envoy listener (HTTP/1.1, ``--connections`` connections):

1. peak: closed loop for ``--duration`` seconds, every arm;
2. half load: open loop at half of quotaplane-http-1's peak, for quotaplane-http-1,
   trivial-http and no-authz: the p99 quotaplane adds is measured against Envoy alone.

Each pass runs ``--rounds`` times per arm, the arms alternating (and taking turns to go first),
so that a slow spell of this shared machine lands on every arm; figures pool the rounds.

It prints req/s and p50/p99/p99.9 latency, the target ratios (HTTP path >= 1.5x trivial gRPC
and >= 0.5x trivial HTTP), the p99 added at half load (target <= 1 ms), the server CPU per
decision, and a decision check: quotaplane's Redis counter must equal the 2xx answers its
three arms got (every admitted request was a real, counted decision), with no ext_authz errors.

Placement (``--placement``, 2-core machine): ``split`` (default) runs the one-process ext_authz
servers on the last CPU and Envoy, OpenClaw and h2load on the others (the 2-worker server gets
every CPU); ``none`` leaves it to the scheduler. ``--realtime`` (bench/priorities.py) runs the
servers, Envoys and Redis at real-time priority above h2load, so that the shared machine's other
work does not set the tails. Not a test: it reports figures, asserts nothing.

    .venv/bin/python bench/envoy_load.py --duration 10 --rounds 3 --realtime
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import priorities
import redis
from envoy_arms import Arm, on_cpus, start_arms
from envoy_report import report
from h2load import Result, pooled, run, with_cpu
from workspace import h2load_missing, new_workspace

from quotaplane.domain.tenants.api_keys import ApiKeyAdmin
from quotaplane.domain.windows import Window, window_start
from quotaplane.storage.redis import keys
from quotaplane.storage.sql.api_keys import SqlApiKeyStore
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tenants import SqlTenantStore

PATH = "/v1/rate"
RATE_BODY = {"type": "domain", "value": "example.com"}
WARM_UP = 1000
HALF_ARMS = ("quotaplane-http-1", "trivial-http", "no-authz")
PLANS = "plans:\n  bench:\n    metrics:\n      requests: {limits: {month: 1000000000000}}\n"


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


def placement(name: str) -> tuple[set[int] | None, set[int] | None]:
    """(CPUs of the one-process ext_authz servers, CPUs of everything else we start)."""
    cpus = sorted(os.sched_getaffinity(0))
    if name == "none" or len(cpus) < 2:
        return None, None
    return {cpus[-1]}, set(cpus[:-1])


def redis_pid(client: redis.Redis) -> int | None:
    with contextlib.suppress(redis.RedisError):
        return int(client.info("server")["process_id"])
    return None


def load(arm: Arm, work: Path, args: argparse.Namespace, secret: str, label: str,
         *, count: int = 0, rps: float = 0) -> Result:  # fmt: skip
    # Envoy's direct_response answers before it reads a request body, which h2load's HTTP/1.1
    # client does not survive: against it the checks are sent without one (GET).
    body: Path | None = None
    if args.upstream == "openclaw":
        body = work / "rate.json"
        if not body.exists():
            body.write_text(json.dumps(RATE_BODY))
    if rps:  # open loop: h2load -r needs a request count; connections open 1/rate apart
        count = round(rps * args.duration)
    return run(f"http://127.0.0.1:{arm.port}{PATH}", body, work / f"{arm.name}-{label}.log",
               connections=args.connections, streams=1, duration=args.duration,
               headers=("content-type: application/json", f"x-api-key: {secret}"),
               count=count, rps=rps, h1=True,
               stagger_ms=max(1, round(1000 / rps)) if rps else 0)  # fmt: skip


def alternating(arms: list[Arm], rounds: int) -> Iterator[tuple[int, Arm]]:
    """(round, arm) for every pass: every arm each round, taking turns to go first."""
    for number in range(rounds):
        for arm in arms if number % 2 == 0 else list(reversed(arms)):
            yield number, arm


def measure(
    arms: dict[str, Arm],
    shared: dict[str, int | None],
    work: Path,
    args: argparse.Namespace,
    secret: str,
    load_cpus: set[int] | None,
) -> float:
    """Warm-up, the peak rounds, then the half-load rounds; returns the half-load rate."""
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in arms}
    with on_cpus(load_cpus):
        for arm in arms.values():
            arm.passes["warm"] = load(arm, work, args, secret, "warm", count=WARM_UP)
        for number, arm in alternating(list(arms.values()), args.rounds):
            peak = functools.partial(load, arm, work, args, secret, f"peak-{number}")
            own = {"envoy": arm.envoy.pid} | {
                f"server{i}": p for i, p in enumerate(arm.server_pids)
            }
            result, used = with_cpu({**own, **shared}, peak)
            arm.rounds["peak"].append(result)
            cpu[arm.name].append(used)
        for name, arm in arms.items():
            arm.passes["peak"] = pooled(arm.rounds["peak"])
            arm.cpu = {k: sum(s[k] for s in cpu[name]) / len(cpu[name]) for k in cpu[name][0]}
        rate = arms["quotaplane-http-1"].passes["peak"].rps / 2
        half = [arms[name] for name in HALF_ARMS]
        for number, arm in alternating(half, args.rounds):
            arm.rounds["half"].append(load(arm, work, args, secret, f"half-{number}", rps=rate))
        for arm in half:
            arm.passes["half"] = pooled(arm.rounds["half"])
    return rate


@contextlib.contextmanager
def realtime(arms: dict[str, Arm], redis: int | None) -> Iterator[None]:
    """Every server, Envoy and Redis at SERVER priority, this process (so h2load) at LOAD;
    Redis, which outlives the run, back to ordinary afterwards."""
    for pid in {p for arm in arms.values() for p in (arm.envoy.pid, *arm.server_pids) if p}:
        priorities.set_process(pid, priorities.SERVER)
    if redis is not None:
        priorities.set_process(redis, priorities.SERVER)
    priorities.set_self(priorities.LOAD)
    try:
        yield
    finally:
        priorities.set_ordinary_self()
        if redis is not None:
            priorities.set_process(redis, None)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pass")
    parser.add_argument("--rounds", type=int, default=3, help="passes per arm and load")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--placement", choices=("split", "none"), default="split")
    parser.add_argument(
        "--upstream",
        choices=("direct", "openclaw"),
        default="direct",
        help="behind Envoy: its own direct_response (default) or the OpenClaw sample",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="servers, Envoys and Redis at real-time priority above h2load (needs root)",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    if args.realtime and not priorities.realtime_allowed():
        parser.error("--realtime needs root or CAP_SYS_NICE")
    return args


def main() -> int:
    args = parse_args()
    if h2load_missing():
        return 2
    space = new_workspace("qp-envoy-bench", PLANS)
    tenant_id, secret = asyncio.run(seed(space.database_url))
    cpus = placement(args.placement)
    client = redis.Redis.from_url(args.redis_url)
    try:
        with contextlib.ExitStack() as stack:
            arms = start_arms(stack, space, args.redis_url, cpus, direct=args.upstream == "direct")
            shared = {"redis": redis_pid(client)}
            if args.realtime:
                stack.enter_context(realtime(arms, shared["redis"]))
            rate = measure(arms, shared, space.work, args, secret, cpus[1])
            stats = {name: arm.envoy_stats() for name, arm in arms.items()}
        month = int(window_start(Window.MONTH, datetime.now(UTC)).timestamp())
        counter = client.get(
            keys.counter_key(space.key_prefix, tenant_id, "requests", "month", month)
        )
        report(arms, rate, int(counter or 0), stats, args, cpus)
    finally:
        for key in client.scan_iter(match=f"{space.key_prefix}:*"):
            client.unlink(key)
        client.close()
        if args.keep:
            print(f"work directory kept: {space.work}")
        else:
            shutil.rmtree(space.work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
