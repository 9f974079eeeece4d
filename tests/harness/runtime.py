"""An in-process quotaplane Runtime for integration tests, and a channel to its gRPC port."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from quotaplane.app.runtime import Runtime
from quotaplane.config import Settings
from tests.harness.tokens import token_channel


def runtime_settings(
    tmp_path: Path,
    *,
    admin_token: str,
    redis_url: str,
    redis_key_prefix: str,
    database_url: str,
    **overrides: Any,
) -> Settings:
    """Any free port, a data dir under ``tmp_path``, a key prefix no other test shares; no
    automatic period close unless asked (it would close last month under other tests)."""
    overrides.setdefault("billing_grace", None)
    return Settings.defaults(
        grpc_addr="127.0.0.1:0",
        authz_http_addr="127.0.0.1:0",
        data_dir=tmp_path / "data",
        admin_token=admin_token,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}:{uuid.uuid4().hex[:8]}",
        database_url=database_url,
        **overrides,
    )


@asynccontextmanager
async def channel_to(runtime: Runtime) -> AsyncIterator[grpc.aio.Channel]:
    """An insecure channel to the running Runtime's gRPC port, presenting the token each RPC
    needs (the Runtime's own, generated or configured)."""
    assert runtime.grpc is not None
    async with token_channel(f"127.0.0.1:{runtime.grpc.port}", runtime.tokens) as channel:
        yield channel
