"""The baseline for bench/quota_load.py: quotaplane's own gRPC server with a constant CheckQuota.

Same ``start_server`` (interceptor, options, health, reflection), same event loop (uvloop when
installed, as ``quotaplane serve``), one process. CheckQuota returns a fixed allowed response
shaped like a real one, so the ratio to it measures what our handler adds: decoding,
validation, the tenant lookup, the Redis round trip and the encoding.

    python bench/trivial_server.py --addr 127.0.0.1:50061
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from typing import Any

import grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc
from google.protobuf.timestamp_pb2 import Timestamp

from quotaplane.transport.grpc.server import Servicers, start_server
from quotaplane_client.v1 import admin_pb2_grpc, quota_pb2, quota_pb2_grpc, types_pb2

RESPONSE = quota_pb2.CheckQuotaResponse(
    allowed=True,
    code=quota_pb2.CheckQuotaResponse.OK,
    cost=1,
    limits=[
        types_pb2.LimitStatus(
            name="requests/month",
            window=types_pb2.WINDOW_MONTH,
            limit=1_000_000_000,
            remaining=999_999_999,
            reset_at=Timestamp(seconds=1_767_225_600),
            overage_policy=types_pb2.OVERAGE_POLICY_BLOCK,
        )
    ],
)


class TrivialQuotaServicer(quota_pb2_grpc.QuotaServiceServicer):
    async def CheckQuota(
        self, request: quota_pb2.CheckQuotaRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> quota_pb2.CheckQuotaResponse:
        return RESPONSE


async def serve(addr: str, max_concurrent_streams: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The other services are registered (as in quotaplane) but never called by the bench.
    servicers = Servicers(
        quota=TrivialQuotaServicer(),
        admin=admin_pb2_grpc.AdminServiceServicer(),
        authz=external_auth_pb2_grpc.AuthorizationServicer(),
    )
    server = await start_server(
        addr,
        servicers,
        admin_token="bench-admin-token",
        max_concurrent_streams=max_concurrent_streams,
    )
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:50061")
    parser.add_argument("--max-concurrent-streams", type=int, default=1000)
    args = parser.parse_args()
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # the same fallback as `quotaplane serve`
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve(args.addr, args.max_concurrent_streams))


if __name__ == "__main__":
    main()
