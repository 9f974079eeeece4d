"""A replica's period close in a process of its own, slowed down per tenant (the crash test).

``python -m tests.integration.period_close_replica PERIOD CLOCK DELAY``: runs the close of
PERIOD with the clock stopped at CLOCK (ISO 8601) and a hook that prints each tenant and then
waits DELAY seconds before closing it, so the test can SIGKILL it mid-run. Settings come from
the QUOTAPLANE_* environment like ``serve``'s.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import datetime, timedelta

from quotaplane.app.billing_close import close_period
from quotaplane.app.billing_parts import CloseOptions
from quotaplane.config import load_settings
from quotaplane.domain.windows import Period

LEASE = timedelta(seconds=30)


def main() -> None:
    period, clock, delay = (
        Period.parse(sys.argv[1]),
        datetime.fromisoformat(sys.argv[2]),
        float(sys.argv[3]),
    )

    async def slowly(tenant_id: str) -> None:
        print(f"closing {tenant_id}", flush=True)
        await asyncio.sleep(delay)

    options = CloseOptions(clock=lambda: clock, on_tenant=slowly, lease=LEASE)
    report = asyncio.run(
        close_period(load_settings(os.environ), period, dry_run=False, options=options)
    )
    print(f"finished {report.status}", flush=True)


if __name__ == "__main__":
    main()
