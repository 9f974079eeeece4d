"""CheckQuota load benchmark: quotaplane against a trivial grpc.aio handler, same run, same load.

Starts, in one run and with the same server settings (one process, uvloop, the same
``start_server``), ``quotaplane serve`` (Redis from --redis-url, a fresh SQLite ledger, one
tenant with a huge monthly quota, its own key prefix) and ``bench/trivial_server.py``. Then, for
each server, h2load (Debian package nghttp2-client) sends a pre-encoded gRPC CheckQuota:

1. peak: closed loop, ``--connections`` x ``--streams`` requests in flight, for ``--duration``;
2. half load: open loop, both servers at half of quotaplane's peak (the lower one), so the p99
   difference is what quotaplane adds at equal traffic; connections open 1/rate apart, since
   h2load's ``--rps`` alone fires every connection at once.

It prints requests/s, p50/p99/p99.9 latency (from h2load's per-request log), errors, the
quotaplane/trivial ratio, and each server's CPU per call at peak (all its threads, from /proc:
steadier than req/s on a busy machine, and what the ratio comes down to once a server's
core is saturated). h2load counts HTTP statuses only and gRPC errors travel as HTTP 200
with a grpc-status trailer, so the run checks the decisions another way: quotaplane's Redis
counter must equal the number of requests h2load completed against it (every call consumed
exactly one unit, none failed). Not a test: it reports figures, it asserts nothing else.

    .venv/bin/python bench/quota_load.py --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import redis
from h2load import Result, cpu_seconds, free_port, run, wait_for_port
from workspace import h2load_missing, new_workspace

from quotaplane.domain.windows import Window, window_start
from quotaplane.storage.redis import keys
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tenants import SqlTenantStore
from quotaplane_client.v1 import quota_pb2

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
METHOD = "/quotaplane.v1.QuotaService/CheckQuota"
TOKEN = "bench-service-token"  # CheckQuota needs the service token
WARM_UP = 2000
PLANS = "plans:\n  bench:\n    metrics:\n      requests: {limits: {month: 1000000000000}}\n"


def grpc_body(tenant_id: str) -> bytes:
    message = quota_pb2.CheckQuotaRequest(tenant_id=tenant_id, cost=1).SerializeToString()
    return b"\x00" + len(message).to_bytes(4, "big") + message


def h2load(
    port: int, body: Path, log: Path, args: argparse.Namespace, rps: float = 0, count: int = 0
) -> Result:
    if rps:  # open loop, connections opened 1/rate apart so that their sends interleave
        count = round(rps * args.duration)
    return run(
        f"http://127.0.0.1:{port}{METHOD}",
        body,
        log,
        connections=args.connections,
        streams=args.streams,
        duration=args.duration,
        count=count,
        rps=rps,
        # Both arms get the service token; only quotaplane checks it, as it does in production.
        headers=(
            "content-type: application/grpc",
            "te: trailers",
            f"authorization: Bearer {TOKEN}",
        ),
        stagger_ms=max(1, round(1000 / rps)) if rps else 0,
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


@dataclass
class Arm:
    """One server's passes, and the CPU it used per call at peak (all its threads)."""

    name: str
    pid: int
    port: int
    passes: dict[str, Result] = field(default_factory=dict)
    cpu_us_per_call: float = 0.0


def measure_peak(arm: Arm, body: Path, work: Path, args: argparse.Namespace) -> None:
    arm.passes["warm"] = h2load(arm.port, body, work / f"{arm.name}-warm.log", args, count=WARM_UP)
    before = cpu_seconds(arm.pid)
    peak = arm.passes["peak"] = h2load(arm.port, body, work / f"{arm.name}-peak.log", args)
    arm.cpu_us_per_call = (cpu_seconds(arm.pid) - before) / max(1, peak.done) * 1e6


def measure_half(arm: Arm, rate: float, body: Path, work: Path, args: argparse.Namespace) -> None:
    arm.passes["half"] = h2load(arm.port, body, work / f"{arm.name}-half.log", args, rps=rate)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--duration", type=int, default=10, help="seconds per pass")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--streams", type=int, default=8, help="requests in flight per connection")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    if h2load_missing():
        return 2
    space = new_workspace("qp-bench", PLANS)
    work, prefix, database_url = space.work, space.key_prefix, space.database_url
    tenant_id = asyncio.run(create_tenant(database_url))
    body = work / "request.bin"
    body.write_bytes(grpc_body(tenant_id))
    ports = {"quotaplane": free_port(), "trivial": free_port()}
    env = {
        "QUOTAPLANE_GRPC_ADDR": f"127.0.0.1:{ports['quotaplane']}",
        "QUOTAPLANE_REDIS_URL": args.redis_url,
        "QUOTAPLANE_DATABASE_URL": database_url,
        "QUOTAPLANE_PLANS": str(space.plans),
        "QUOTAPLANE_REDIS_KEY_PREFIX": prefix,
        "QUOTAPLANE_ADMIN_TOKEN": "bench-admin-token",
        "QUOTAPLANE_SERVICE_TOKEN": TOKEN,
        "QUOTAPLANE_DATA_DIR": str(work / "data"),
        "QUOTAPLANE_METRICS_ADDR": "off",
        "QUOTAPLANE_AUTHZ_HTTP_ADDR": "off",
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
        arms = {
            name: Arm(name, servers[name].pid, ports[name]) for name in ("trivial", "quotaplane")
        }
        for arm in arms.values():
            measure_peak(arm, body, work, args)
        # Both arms at one rate: half of quotaplane's peak (the lower one), so that the
        # latency difference is what quotaplane adds at equal traffic.
        rate = min(arm.passes["peak"].rps for arm in arms.values()) / 2
        for arm in arms.values():
            measure_half(arm, rate, body, work, args)
        month = int(window_start(Window.MONTH, datetime.now(UTC)).timestamp())
        consumed = int(
            client.get(keys.counter_key(prefix, tenant_id, "requests", "month", month)) or 0
        )
        report(arms, consumed, args)
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


def report(arms: dict[str, Arm], consumed: int, args: argparse.Namespace) -> None:
    print(
        f"h2load -c {args.connections} -m {args.streams} -t 1, {args.duration}s per pass, "
        f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print(
        f"{'pass':<22} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>8}"
        f" {'errors':>7} {'done':>8}"
    )
    for arm in arms.values():
        print(arm.passes["peak"].row(f"{arm.name} peak"))
        print(arm.passes["half"].row(f"{arm.name} half-load"))
    ours, trivial = arms["quotaplane"], arms["trivial"]
    ratio = ours.passes["peak"].rps / trivial.passes["peak"].rps
    print(f"ratio quotaplane/trivial at peak: {ratio:.2f} (target >= 0.75)")
    added = ours.passes["half"].p99 - trivial.passes["half"].p99
    print(
        f"half load: both at {ours.passes['half'].rps:.0f} req/s; quotaplane p99 "
        f"{ours.passes['half'].p99:.2f} ms (target <= 2 ms), {added:+.2f} ms over trivial"
    )
    print(
        f"server CPU per call at peak: trivial {trivial.cpu_us_per_call:.0f} us, "
        f"quotaplane {ours.cpu_us_per_call:.0f} us "
        f"(ratio {trivial.cpu_us_per_call / ours.cpu_us_per_call:.2f})"
    )
    sent = sum(r.succeeded for r in ours.passes.values())
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
