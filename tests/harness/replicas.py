"""Two ``quotaplane serve`` replicas on one ledger, one Redis key prefix and the Stripe emulator:
the e2e tests of exactly-once billing and of the meter reporter drive them, kill one and
restart it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from quotaplane_client.v1 import quota_pb2_grpc
from tests.fakes import StripeEmulator
from tests.harness.quotaplane_server import ServeProcess, serve_process
from tests.harness.tokens import token_channel


@dataclass
class Replicas:
    servers: list[ServeProcess]
    stubs: list[quota_pb2_grpc.QuotaServiceStub]

    async def call(self, method: str, request: Message, deadline: float = 5) -> Any:
        """``method`` on replicas in turn until one answers (a killed one refuses or drops it)."""
        for attempt in range(600):
            stub = self.stubs[(attempt + random.randrange(2)) % len(self.stubs)]
            try:
                return await getattr(stub, method)(request, timeout=deadline)
            except grpc.aio.AioRpcError as error:
                if error.code() not in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED,
                ):
                    raise
            await asyncio.sleep(0.05)
        raise AssertionError("no replica answered for 30 s")

    async def restart(self, index: int) -> None:
        process = self.servers[index].process
        await asyncio.to_thread(process.kill)
        await asyncio.sleep(0.2)
        process.start()
        await asyncio.to_thread(process.wait_for_port, self.servers[index].port, "127.0.0.1", 60)


@contextlib.asynccontextmanager
async def stripe_replicas(
    workdir: Path,
    *,
    plans: str,
    redis_url: str,
    key_prefix: str,
    database_url: str,
    emulator: StripeEmulator,
    env: Mapping[str, str] = {},
) -> AsyncIterator[Replicas]:
    """Two replicas started and reachable (each with the service token), stopped on exit."""
    plans_path = workdir / "plans.yaml"
    plans_path.write_text(plans)
    settings = {
        "QUOTAPLANE_FLUSH_INTERVAL": "200ms",
        "QUOTAPLANE_METRICS_ADDR": "off",
        "STRIPE_API_KEY": emulator.api_key,
        "QUOTAPLANE_STRIPE_API_BASE": emulator.api_base,
        **env,
    }
    prefix = f"{key_prefix}:{uuid.uuid4().hex[:6]}"
    servers = [
        serve_process(
            workdir,
            redis_url=redis_url,
            database_url=database_url,
            key_prefix=prefix,
            plans_path=plans_path,
            env=settings,
            name=f"replica{i}",
        )
        for i in range(2)
    ]
    channels = [token_channel(server.addr, server.tokens) for server in servers]
    try:
        for server in servers:
            server.process.start()
            await asyncio.to_thread(server.process.wait_for_port, server.port, "127.0.0.1", 60)
        yield Replicas(servers, [quota_pb2_grpc.QuotaServiceStub(c) for c in channels])
    finally:
        for channel in channels:
            await channel.close()
        for server in servers:
            server.process.close()
