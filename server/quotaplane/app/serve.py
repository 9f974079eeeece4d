"""``quotaplane serve``: run one Runtime until SIGTERM or SIGINT, then drain and stop."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from quotaplane.app.runtime import Runtime
from quotaplane.config import Settings
from quotaplane.logs import redact_url

log = logging.getLogger(__name__)


async def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, then drain in-flight calls and stop what was started."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Runtime(settings) as runtime:
        storage = runtime.running.storage
        _freeze_startup_objects()
        log.info(
            "quotaplane serving",
            extra={
                "grpc_addr": settings.grpc_addr,
                "authz_http_addr": settings.authz_http_addr,
                "redis": redact_url(storage.redis_url),
                "database": redact_url(storage.database_url),
            },
        )
        await stop.wait()
        log.info(
            "shutting down: draining in-flight calls",
            extra={"grace_s": settings.shutdown_grace.total_seconds()},
        )
    log.info("stopped")


def _freeze_startup_objects() -> None:
    """Keep what start-up built (modules, descriptors, plans: ~100k objects) out of every
    later garbage collection. Unfrozen, each full collection walked them all on the event
    loop: ~50 ms with every call waiting (measured: 110k objects, 48 ms; frozen, 0.0 ms)."""
    gc.collect()
    gc.freeze()
