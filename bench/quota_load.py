"""CheckQuota load benchmark: quotaplane against a trivial grpc.aio handler, same run, same load.

Starts, in one run and with the same server settings (one process, uvloop, the same
``start_server``), ``quotaplane serve`` (Redis from --redis-url, a fresh SQLite ledger, one
tenant with a huge monthly quota, its own key prefix) and ``bench/trivial_server.py``. Then, for
each server, h2load (Debian package nghttp2-client) sends a pre-encoded gRPC CheckQuota:

1. peak: closed loop, ``--connections`` x ``--streams`` requests in flight, for ``--duration``;
2. half load: open loop at half of that server's peak rate, for ``--duration``.

It prints requests/s, p50/p99/p99.9 latency (from h2load's per-request log), errors, and the
quotaplane/trivial ratio. h2load counts HTTP statuses only and gRPC errors travel as HTTP 200
with a grpc-status trailer, so the run checks the decisions another way: quotaplane's Redis
counter must equal the number of requests h2load completed against it (every call consumed
exactly one unit, none failed). Not a test: it reports figures, it asserts nothing else.

    .venv/bin/python bench/quota_load.py --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import redis
from h2load import Result, free_port, run, wait_for_port

from quotaplane.domain.windows import Window, window_start
from quotaplane.storage.redis import keys
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane_client.v1 import quota_pb2

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
METHOD = "/quotaplane.v1.QuotaService/CheckQuota"
WARM_UP = 2000
PLANS = "plans:\n  bench:\n    metrics:\n      requests: {limits: {month: 1000000000000}}\n"


def grpc_body(tenant_id: str) -> bytes:
    message = quota_pb2.CheckQuotaRequest(tenant_id=tenant_id, cost=1).SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(
    port: int, body: Path, log: Path, args: argparse.Namespace, rps: float = 0, count: int = 0
) -> Result:
    return run(
        f"http://127.0.0.1:{port}{METHOD}",
        body,
        log,
        connections=args.connections,
        streams=args.streams,
        duration=args.duration,
        count=count,
        rps=rps,
        headers=("content-type: application/grpc", "te: trailers"),
    )


async def create_tenant(database_url: str) -> str:
    engine = create_async_engine_for(database_url)
    try:
        return (await SqlTenantStore(engine).create(name="bench", plan="bench")).id
    finally:
        await engine.dispose()


def start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        argv, env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def measure(
    name: str, port: int, body: Path, work: Path, args: argparse.Namespace
) -> tuple[Result, Result, Result]:
    warm = h2load(port, body, work / f"{name}-warm.log", args, count=WARM_UP)
    peak = h2load(port, body, work / f"{name}-peak.log", args)
    half = h2load(port, body, work / f"{name}-half.log", args, rps=peak.rps / 2)
    return warm, peak, half


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pass")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--streams", type=int, default=8, help="requests in flight per connection")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if shutil.which("h2load") is None:
        print("h2load not found: apt-get install -y nghttp2-client", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="qp-bench-"))
    prefix = f"qpbench-{secrets.token_hex(3)}"
    database_url = f"sqlite:///{work / 'ledger.db'}"
    (work / "plans.yaml").write_text(PLANS)
    migrate.upgrade(database_url)
    tenant_id = asyncio.run(create_tenant(database_url))
    body = work / "request.bin"
    body.write_bytes(grpc_body(tenant_id))
    ports = {"quotaplane": free_port(), "trivial": free_port()}
    env = {
        "QUOTAPLANE_GRPC_ADDR": f"127.0.0.1:{ports['quotaplane']}",
        "QUOTAPLANE_REDIS_URL": args.redis_url,
        "QUOTAPLANE_DATABASE_URL": database_url,
        "QUOTAPLANE_PLANS": str(work / "plans.yaml"),
        "QUOTAPLANE_REDIS_KEY_PREFIX": prefix,
        "QUOTAPLANE_ADMIN_TOKEN": "bench-admin-token",
        "QUOTAPLANE_DATA_DIR": str(work / "data"),
        "QUOTAPLANE_METRICS_ADDR": "off",
        "QUOTAPLANE_LOG_LEVEL": "WARNING",
    }
    servers = {
        "quotaplane": start([str(BIN / "quotaplane"), "serve"], env, work / "quotaplane.log"),
        "trivial": start(
            [
                sys.executable,
                str(HERE / "trivial_server.py"),
                "--addr",
                f"127.0.0.1:{ports['trivial']}",
            ],
            {},
            work / "trivial.log",
        ),
    }
    client = redis.Redis.from_url(args.redis_url)
    try:
        for name, process in servers.items():
            try:
                wait_for_port(ports[name], process)
            except RuntimeError:
                print((work / f"{name}.log").read_text()[-3000:], file=sys.stderr)
                raise
        results = {
            name: measure(name, ports[name], body, work, args) for name in ("trivial", "quotaplane")
        }
        month = int(window_start(Window.MONTH, datetime.now(UTC)).timestamp())
        consumed = int(
            client.get(keys.counter_key(prefix, tenant_id, "requests", "month", month)) or 0
        )
        report(results, consumed, args)
    finally:
        for process in servers.values():
            stop(process)
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.unlink(key)
        client.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"work directory kept: {work}")
    return 0


def report(
    results: dict[str, tuple[Result, Result, Result]], consumed: int, args: argparse.Namespace
) -> None:
    print(
        f"h2load -c {args.connections} -m {args.streams} -t 1, {args.duration}s per pass, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print(
        f"{'pass':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8}"
        f" {'errors':>7} {'done':>8}"
    )
    for name, (_, peak, half) in results.items():
        print(peak.row(f"{name} peak"))
        print(half.row(f"{name} half-load"))
    ratio = results["quotaplane"][1].rps / results["trivial"][1].rps
    print(f"ratio quotaplane/trivial at peak: {ratio:.2f}")
    sent = sum(r.succeeded for r in results["quotaplane"])
    # A -D pass ends with up to connections x streams calls in flight: Redis may have counted
    # them while h2load no longer did. More consumed than that, or fewer than completed, is wrong.
    slack = 2 * args.connections * args.streams
    verdict = "OK" if 0 <= consumed - sent <= slack else "MISMATCH"
    print(
        f"decision check: Redis counter {consumed}, calls completed {sent} "
        f"(cut-off slack {slack}) -> {verdict}"
    )


if __name__ == "__main__":
    raise SystemExit(main())
