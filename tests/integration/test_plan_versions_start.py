"""At start, QUOTAPLANE_PLANS is applied as a new plans version only when it differs from the
newest one; a replica started without it serves the newest version (the packaged default only
fills an empty ledger); ReloadPlans applies the file as a version."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import grpc
import pytest

from quotaplane.app.runtime import Runtime
from quotaplane.config import Settings
from quotaplane.storage.sql import migrate
from quotaplane_client.v1 import admin_pb2, admin_pb2_grpc
from tests.harness.runtime import channel_to, runtime_settings

pytestmark = pytest.mark.timeout(120)

V1 = "plans:\n  starter: {price_per_1000_requests: 0.05, monthly_quota: 10000}\n"
V2 = "plans:\n  starter: {price_per_1000_requests: 0.07, monthly_quota: 10000}\n"


async def _history(settings: Settings) -> tuple[list[tuple[int, str]], int]:
    """(version, applied_by) newest first, and the version the started replica serves."""
    async with Runtime(settings) as runtime, channel_to(runtime) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        history = await admin.ListPlanVersions(admin_pb2.ListPlanVersionsRequest(), timeout=10)
        listed = await admin.ListPlans(admin_pb2.ListPlansRequest(), timeout=10)
    return [(v.version, v.applied_by) for v in history.versions], listed.version


async def test_the_plans_file_is_a_new_version_only_when_it_changed(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, sqlite_url: str
) -> None:
    await asyncio.to_thread(migrate.upgrade, sqlite_url)
    plans = tmp_path / "plans.yaml"
    plans.write_text(V1)
    settings = runtime_settings(
        tmp_path,
        admin_token="start-token",
        plans_path=plans,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}:start",
        database_url=sqlite_url,
    )
    assert await _history(settings) == ([(1, "serve")], 1)
    assert await _history(settings) == ([(1, "serve")], 1)  # unchanged file: no new version
    plans.write_text("# reformatted\nplans:\n  starter:\n    monthly_quota: 10000\n"
                     "    price_per_1000_requests: 0.05\n")  # fmt: skip
    assert await _history(settings) == ([(1, "serve")], 1)  # same plans, other text
    plans.write_text(V2)
    assert await _history(settings) == ([(2, "serve"), (1, "serve")], 2)
    # Without QUOTAPLANE_PLANS the packaged default does not undo version 2.
    unset = dataclasses.replace(settings, plans_path=None)
    assert await _history(unset) == ([(2, "serve"), (1, "serve")], 2)


async def test_reload_plans_applies_the_file_as_a_version(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, sqlite_url: str
) -> None:
    await asyncio.to_thread(migrate.upgrade, sqlite_url)
    plans = tmp_path / "plans.yaml"
    plans.write_text(V1)
    settings = runtime_settings(
        tmp_path,
        admin_token="reload-token",
        plans_path=plans,
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}:reload",
        database_url=sqlite_url,
    )
    async with Runtime(settings) as runtime, channel_to(runtime) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        plans.write_text(V2)
        reloaded = await admin.ReloadPlans(admin_pb2.ReloadPlansRequest(), timeout=10)
        history = await admin.ListPlanVersions(
            admin_pb2.ListPlanVersionsRequest(include_document=True), timeout=10
        )
    assert reloaded.version == 2 and reloaded.source == str(plans)
    assert [(v.version, v.applied_by, v.document) for v in history.versions] == [
        (2, "admin", V2),
        (1, "serve", V1),
    ]


async def test_a_large_document_applies_and_a_nul_is_refused(
    tmp_path: Path, redis_url: str, redis_key_prefix: str, sqlite_url: str
) -> None:
    await asyncio.to_thread(migrate.upgrade, sqlite_url)
    settings = runtime_settings(
        tmp_path,
        admin_token="large-token",
        redis_url=redis_url,
        redis_key_prefix=f"{redis_key_prefix}:large",
        database_url=sqlite_url,
    )
    many = "plans:\n" + "".join(
        f"  plan-{i}: {{price_per_1000_requests: 0.05, monthly_quota: {i}}}\n" for i in range(300)
    )
    assert len(many) > 4096  # longer than the general limit on request strings
    async with Runtime(settings) as runtime, channel_to(runtime) as channel:
        admin = admin_pb2_grpc.AdminServiceStub(channel)
        applied = await admin.ApplyPlans(admin_pb2.ApplyPlansRequest(document=many), timeout=10)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await admin.ApplyPlans(admin_pb2.ApplyPlansRequest(document=V1 + "\x00"), timeout=10)
        listed = await admin.ListPlans(admin_pb2.ListPlansRequest(), timeout=10)
    assert applied.changed and len(listed.plans) == 300
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NUL" in (refused.value.details() or "")
