"""Random-key flood benchmark: what made-up API keys cost the database and the other tenants.

Starts ``quotaplane serve`` (Redis from --redis-url, a fresh Postgres database on the
--postgres-url server, one tenant with a real key) and calls Envoy's gRPC
``Authorization/Check`` on it directly:

1. baseline: the legitimate tenant's Check, one call at a time, --legit-calls times;
2. flood: --keys distinct well-formed random keys (``qp_live_`` + 43 characters) from
   --concurrency concurrent callers in a process of their own, while the legitimate tenant
   keeps calling as in 1.

It prints the legitimate tenant's Check p50/p99 in both phases, and the database
transactions (Postgres ``pg_stat_database`` commits + rollbacks) per 1,000 random keys, after
subtracting the background rate (cache polls, usage flusher) measured over the baseline.
``--realtime`` (bench/priorities.py) runs the legitimate caller, the server and Redis with
real-time priority and leaves the flood ordinary, as an attacker's client on another machine
would be: without it, on a 2-core machine, the flood's own client takes a core from the server
and the figures measure the run queue. Not a test: it reports figures. Run it against another
tree (e.g. the previous commit) with PYTHONPATH=<tree>/server to compare.

    .venv/bin/python bench/key_flood.py --keys 2000 --concurrency 50 --realtime
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import priorities
import psycopg
import redis
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from h2load import free_port, wait_for_port

from quotaplane.storage.sql import migrate
from quotaplane_client import QuotaplaneClient
from quotaplane_client.v1 import admin_pb2

PLANS = "plans:\n  bench:\n    metrics:\n      requests: {limits: {month: 100000000}}\n"
ADMIN_TOKEN = "bench-admin-token"
SERVICE_TOKEN = "bench-service-token"  # Envoy's Check needs the service role's token
SERVICE_METADATA = (("authorization", f"Bearer {SERVICE_TOKEN}"),)
STATS_SETTLE = 1.5  # Postgres publishes a backend's counters within ~1 s of its transactions


def _check_request(key: str) -> external_auth_pb2.CheckRequest:
    request = external_auth_pb2.CheckRequest()
    request.attributes.request.http.headers["x-api-key"] = key
    return request


def _random_key() -> str:
    return "qp_live_" + secrets.token_urlsafe(32)


async def legit_latencies(stub: object, key: str, calls: int) -> list[float]:
    request, seconds = _check_request(key), []
    for _ in range(calls):
        started = time.perf_counter()
        response = await stub.Check(request, timeout=10, metadata=SERVICE_METADATA)  # type: ignore[attr-defined]
        seconds.append(time.perf_counter() - started)
        assert response.status.code == 0, response.status
    return seconds


async def flood(addr: str, keys: int, concurrency: int) -> None:
    remaining = iter(range(keys))
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)

        async def worker() -> None:
            for _ in remaining:
                response = await stub.Check(
                    _check_request(_random_key()), timeout=10, metadata=SERVICE_METADATA
                )
                assert response.denied_response.status.code == 401

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def run_flood(addr: str, keys: int, concurrency: int, ordinary: bool) -> None:
    """The flood, in a process of its own: its client work must not delay the measured calls."""
    if ordinary:
        priorities.set_ordinary_self()
    asyncio.run(flood(addr, keys, concurrency))


def transactions(url: str, name: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    assert row is not None
    return int(row[0])


def quantiles(seconds: list[float]) -> str:
    cuts = statistics.quantiles(seconds, n=100)
    return f"p50 {cuts[49] * 1000:.2f} ms, p99 {cuts[98] * 1000:.2f} ms (n={len(seconds)})"


async def measure(addr: str, key: str, args: argparse.Namespace, stats: tuple[str, str]) -> None:
    async with grpc.aio.insecure_channel(addr) as channel:
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        await legit_latencies(stub, key, 200)  # warm up
        await asyncio.sleep(STATS_SETTLE)
        start_x, started = transactions(*stats), time.monotonic()
        baseline = await legit_latencies(stub, key, args.legit_calls)
        await asyncio.sleep(STATS_SETTLE)
        background = (transactions(*stats) - start_x) / (time.monotonic() - started)
        flood_x, flood_started = transactions(*stats), time.monotonic()
        # spawn, not fork: grpc in the parent process does not survive a fork.
        flooding = multiprocessing.get_context("spawn").Process(
            target=run_flood, args=(addr, args.keys, args.concurrency, args.realtime)
        )
        flooding.start()
        during: list[float] = []
        while flooding.is_alive():
            during += await legit_latencies(stub, key, 20)
        flooding.join()
        assert flooding.exitcode == 0, f"the flood failed (exit {flooding.exitcode})"
        flood_seconds = time.monotonic() - flood_started
        await asyncio.sleep(STATS_SETTLE)
        spent = transactions(*stats) - flood_x
    net = spent - background * (flood_seconds + STATS_SETTLE)
    print(f"legit Check, no flood:     {quantiles(baseline)}")
    print(f"legit Check, during flood: {quantiles(during)}")
    print(
        f"flood: {args.keys} random keys, {args.concurrency} concurrent, {flood_seconds:.2f} s "
        f"({args.keys / flood_seconds:.0f} keys/s)"
    )
    print(f"background: {background:.1f} transactions/s")
    print(
        f"DB transactions during the flood: {spent} raw, {net:.0f} net of background "
        f"({net / flood_seconds:.1f}/s)"
    )
    print(f"DB transactions per 1,000 random keys: {net * 1000 / args.keys:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--legit-calls", type=int, default=2000)
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="real-time priority for the legitimate caller, the server and Redis (needs root)",
    )
    args = parser.parse_args()
    if args.realtime and not priorities.realtime_allowed():
        parser.error("--realtime needs root or CAP_SYS_NICE")
    name = f"qpbench_flood_{secrets.token_hex(4)}"
    with psycopg.connect(args.postgres_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    database_url = args.postgres_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        run_with_database(args, database_url, name)
    finally:
        with psycopg.connect(args.postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def realtime(args: argparse.Namespace, server_pid: int) -> Iterator[None]:
    """Under --realtime: this process (the legitimate caller), the server and a local Redis at
    real-time priority for the measurement, Redis put back to ordinary afterwards."""
    if not args.realtime:
        yield
        return
    client = redis.Redis.from_url(args.redis_url)
    redis_pid = int(client.info("server")["process_id"])
    client.close()
    priorities.set_process(server_pid, priorities.SERVER)
    priorities.set_process(redis_pid, priorities.SERVER)
    priorities.set_self(priorities.INSTRUMENT)
    try:
        yield
    finally:
        priorities.set_ordinary_self()
        priorities.set_process(redis_pid, None)


def run_with_database(args: argparse.Namespace, database_url: str, name: str) -> None:
    migrate.upgrade(database_url)
    work = Path(tempfile.mkdtemp(prefix="key-flood-"))
    (work / "plans.yaml").write_text(PLANS)
    port = free_port()
    env = {**os.environ, "QUOTAPLANE_GRPC_ADDR": f"127.0.0.1:{port}",
           "QUOTAPLANE_REDIS_URL": args.redis_url, "QUOTAPLANE_DATABASE_URL": database_url,
           "QUOTAPLANE_REDIS_KEY_PREFIX": f"qpbench-{secrets.token_hex(3)}",
           "QUOTAPLANE_ADMIN_TOKEN": ADMIN_TOKEN, "QUOTAPLANE_SERVICE_TOKEN": SERVICE_TOKEN,
           "QUOTAPLANE_AUTHZ_HTTP_ADDR": "off", "QUOTAPLANE_PLANS": str(work / "plans.yaml"),
           "QUOTAPLANE_METRICS_ADDR": "off", "QUOTAPLANE_DATA_DIR": str(work / "data")}  # fmt: skip
    quotaplane = Path(sys.executable).parent / "quotaplane"
    with open(work / "serve.log", "wb") as log:
        server = subprocess.Popen([str(quotaplane), "serve"], env=env, stdout=log, stderr=log)
    try:
        wait_for_port(port, server)
        addr = f"127.0.0.1:{port}"
        with QuotaplaneClient(addr, admin_token=ADMIN_TOKEN) as admin:
            tenant = admin.admin_call(
                "CreateTenant", admin_pb2.CreateTenantRequest(name="legit", plan="bench")
            )
            key = admin.admin_call(
                "CreateApiKey", admin_pb2.CreateApiKeyRequest(tenant_id=tenant.id, name="bench")
            ).secret
        stats_url = database_url.rsplit("/", 1)[0] + "/postgres"
        with realtime(args, server.pid):
            asyncio.run(measure(addr, key, args, (stats_url, name)))
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
