#!/usr/bin/env python3
"""Example internal service: a batch job that rates a file of domains for a tenant.

Each chunk is one call against the tenant's `requests` limits: the job asks CheckQuota first
(with a request id, so a retried call is charged once) and stops cleanly when the tenant is over
a limit. The domains it rated are billed as `rating.bulk` units through RecordUsage, with event
ids derived from the job and chunk, so re-running the same job never bills twice. The tenant's
plan needs both metrics (the `demo` plan of deploy/demo-plans.yaml has them).

    QUOTAPLANE_SERVICE_TOKEN=... QUOTAPLANE_BILLING_TOKEN=... \
    python clients/examples/bulk_rating_job.py --target 127.0.0.1:50051 \
        --tenant 6f1c7a1e-... --input domains.txt --chunk 100
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import sys
from pathlib import Path

from quotaplane_client import AsyncQuotaplaneClient, usage_event


def rate(domain: str) -> int:
    """Stand-in for the real rating: a deterministic score 0-100."""
    return int.from_bytes(hashlib.sha256(domain.encode()).digest()[:2], "big") % 101


async def run(target: str, tenant: str, domains: list[str], chunk: int, job_id: str) -> int:
    async with AsyncQuotaplaneClient(
        target,
        timeout=2.0,
        service_token=os.environ.get("QUOTAPLANE_SERVICE_TOKEN"),  # CheckQuota
        billing_token=os.environ.get("QUOTAPLANE_BILLING_TOKEN"),  # RecordUsage
    ) as client:
        for start in range(0, len(domains), chunk):
            part = domains[start : start + chunk]
            request_id = f"{job_id}:{start}"
            decision = await client.check_quota(tenant, request_id=request_id)
            if not decision.allowed:
                wait = decision.retry_after.seconds
                print(f"stopped at {start}: {decision.code} (retry in {wait}s)", file=sys.stderr)
                return 2
            scores = [rate(domain) for domain in part]
            await client.record_usage([usage_event(request_id, tenant, len(scores), "rating.bulk")])
            mean = sum(scores) / len(scores)
            print(f"rated {start + len(part)}/{len(domains)} (mean score {mean:.1f})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--tenant", required=True)
    parser.add_argument("--input", type=Path, required=True)
    parser.add_argument("--chunk", type=int, default=100)
    args = parser.parse_args()
    domains = [line.strip() for line in args.input.read_text().splitlines() if line.strip()]
    job_id = hashlib.sha256(args.input.read_bytes()).hexdigest()[:16]
    return asyncio.run(run(args.target, args.tenant, domains, args.chunk, job_id))


if __name__ == "__main__":
    sys.exit(main())
