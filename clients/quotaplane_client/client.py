"""Typed Python clients for quotaplane: ``QuotaplaneClient`` (sync) and ``AsyncQuotaplaneClient``.

Both wrap the generated stubs with what every caller needs:

- a deadline on every call (``timeout``, default 2 s);
- retries on UNAVAILABLE with exponential backoff and full jitter, but only for calls that are
  safe to repeat: reads, ``RecordUsage`` (deduplicated by event id), ``GenerateInvoice``
  (one invoice per tenant and period), and ``CheckQuota`` *when it carries a request_id*
  (a repeat is answered from the first decision). A CheckQuota without request_id is never
  retried: the first attempt may have been admitted before the connection broke. Pass
  ``auto_request_id=True`` to let the client add one (at the price of a dedup entry in Redis);
- the admin token (``authorization: Bearer``) on AdminService calls, and the optional service
  token on QuotaService calls.

Errors surface as ``grpc.RpcError`` (sync) or ``grpc.aio.AioRpcError`` (async) with the
server's status code and message.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc

from quotaplane_client.v1 import admin_pb2_grpc, quota_pb2, quota_pb2_grpc, types_pb2


@dataclass(frozen=True)
class RetryPolicy:
    """Retry on UNAVAILABLE: at most ``attempts`` calls, sleeping base * 2**n (capped, jittered)."""

    attempts: int = 4
    base_delay: float = 0.05
    max_delay: float = 1.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))


NO_RETRY = RetryPolicy(attempts=1)


def _metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


def check_quota_request(
    tenant_id: str,
    metric: str = "",
    cost: int = 1,
    request_id: str = "",
    dry_run: bool = False,
    labels: Mapping[str, str] | None = None,
) -> quota_pb2.CheckQuotaRequest:
    return quota_pb2.CheckQuotaRequest(
        tenant_id=tenant_id, metric=metric, cost=cost, request_id=request_id,
        dry_run=dry_run, labels=dict(labels or {}),
    )  # fmt: skip


def usage_event(
    event_id: str, tenant_id: str, quantity: int, metric: str = "", timestamp: float | None = None
) -> quota_pb2.UsageEvent:
    """A RecordUsage event; ``timestamp`` in seconds since the epoch (None = now, server side)."""
    event = quota_pb2.UsageEvent(
        event_id=event_id, tenant_id=tenant_id, metric=metric, quantity=quantity
    )
    if timestamp is not None:
        event.timestamp.FromNanoseconds(int(timestamp * 1e9))
    return event


class _Base:
    """What both clients share: settings, stubs, and which calls may be retried."""

    def __init__(
        self,
        target: str,
        *,
        admin_token: str | None = None,
        service_token: str | None = None,
        billing_token: str | None = None,
        timeout: float = 2.0,
        retry: RetryPolicy = RetryPolicy(),
        auto_request_id: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        self._admin_md = _metadata(admin_token)
        self._service_md = _metadata(service_token)
        # RecordUsage and draft invoices take the billing token, or else the admin token.
        self._billing_md = _metadata(billing_token or admin_token)
        self._timeout = timeout
        self._retry = retry
        self._auto_request_id = auto_request_id
        self._channel = self._open_channel(target, credentials)
        self.quota = quota_pb2_grpc.QuotaServiceStub(self._channel)
        self.admin = admin_pb2_grpc.AdminServiceStub(self._channel)

    def _open_channel(self, target: str, credentials: grpc.ChannelCredentials | None) -> Any:
        raise NotImplementedError

    def _admin_retry(self, name: str, retry: bool | None) -> RetryPolicy:
        """Reads retry, writes do not (a create that timed out may have happened)."""
        safe = name.startswith(("Get", "List")) if retry is None else retry
        return self._retry if safe else NO_RETRY

    def _invoice_md(self, request: quota_pb2.GenerateInvoiceRequest) -> Any:
        """Finalize, force and push_to_stripe need the admin token; a draft the billing one."""
        closes = request.finalize or request.force or request.push_to_stripe
        return self._admin_md if closes else self._billing_md

    def _check_request(
        self, request: quota_pb2.CheckQuotaRequest
    ) -> tuple[quota_pb2.CheckQuotaRequest, RetryPolicy]:
        if not request.request_id and self._auto_request_id:
            request.request_id = uuid.uuid4().hex
        return request, (self._retry if request.request_id else NO_RETRY)


def _retryable(error: grpc.RpcError) -> bool:
    return bool(error.code() == grpc.StatusCode.UNAVAILABLE)


class QuotaplaneClient(_Base):
    """Blocking client. Use as a context manager, or call ``close()``."""

    def _open_channel(self, target: str, credentials: grpc.ChannelCredentials | None) -> Any:
        return (
            grpc.secure_channel(target, credentials)
            if credentials
            else grpc.insecure_channel(target)
        )

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> QuotaplaneClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self, method: Callable[..., Any], request: Any, metadata: Any, retry: RetryPolicy
    ) -> Any:
        for attempt in range(retry.attempts):
            try:
                return method(request, timeout=self._timeout, metadata=metadata)
            except grpc.RpcError as error:
                if attempt + 1 >= retry.attempts or not _retryable(error):
                    raise
                time.sleep(retry.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    # QuotaService
    def check_quota(self, tenant_id: str, **fields: Any) -> quota_pb2.CheckQuotaResponse:
        request, retry = self._check_request(check_quota_request(tenant_id, **fields))
        return cast(
            quota_pb2.CheckQuotaResponse,
            self._call(self.quota.CheckQuota, request, self._service_md, retry),
        )

    def record_usage(self, events: Sequence[quota_pb2.UsageEvent]) -> quota_pb2.RecordUsageResponse:
        request = quota_pb2.RecordUsageRequest(events=list(events))
        return cast(
            quota_pb2.RecordUsageResponse,
            self._call(self.quota.RecordUsage, request, self._billing_md, self._retry),
        )

    def generate_invoice(self, tenant_id: str, period: str, **flags: bool) -> types_pb2.Invoice:
        request = quota_pb2.GenerateInvoiceRequest(tenant_id=tenant_id, period=period, **flags)
        return cast(
            types_pb2.Invoice,
            self._call(self.quota.GenerateInvoice, request, self._invoice_md(request), self._retry),
        )

    def admin_call(self, name: str, request: Any, *, retry: bool | None = None) -> Any:
        """Call AdminService method ``name`` (e.g. "ListTenants") with the admin token."""
        return self._call(
            getattr(self.admin, name), request, self._admin_md, self._admin_retry(name, retry)
        )


class AsyncQuotaplaneClient(_Base):
    """asyncio client (grpc.aio). Use ``async with``, or await ``close()``."""

    def _open_channel(self, target: str, credentials: grpc.ChannelCredentials | None) -> Any:
        return (
            grpc.aio.secure_channel(target, credentials)
            if credentials
            else grpc.aio.insecure_channel(target)
        )

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncQuotaplaneClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self, method: Callable[..., Any], request: Any, metadata: Any, retry: RetryPolicy
    ) -> Any:
        for attempt in range(retry.attempts):
            try:
                return await method(request, timeout=self._timeout, metadata=metadata)
            except grpc.aio.AioRpcError as error:
                if attempt + 1 >= retry.attempts or not _retryable(error):
                    raise
                await asyncio.sleep(retry.delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def check_quota(self, tenant_id: str, **fields: Any) -> quota_pb2.CheckQuotaResponse:
        request, retry = self._check_request(check_quota_request(tenant_id, **fields))
        return cast(
            quota_pb2.CheckQuotaResponse,
            await self._call(self.quota.CheckQuota, request, self._service_md, retry),
        )

    async def record_usage(
        self, events: Sequence[quota_pb2.UsageEvent]
    ) -> quota_pb2.RecordUsageResponse:
        request = quota_pb2.RecordUsageRequest(events=list(events))
        return cast(
            quota_pb2.RecordUsageResponse,
            await self._call(self.quota.RecordUsage, request, self._billing_md, self._retry),
        )

    async def generate_invoice(
        self, tenant_id: str, period: str, **flags: bool
    ) -> types_pb2.Invoice:
        request = quota_pb2.GenerateInvoiceRequest(tenant_id=tenant_id, period=period, **flags)
        return cast(
            types_pb2.Invoice,
            await self._call(
                self.quota.GenerateInvoice, request, self._invoice_md(request), self._retry
            ),
        )

    async def admin_call(self, name: str, request: Any, *, retry: bool | None = None) -> Any:
        return await self._call(
            getattr(self.admin, name), request, self._admin_md, self._admin_retry(name, retry)
        )
