"""Test harness: real Redis and Postgres servers, test processes, and helpers to reach them.

Plain helper modules (no fixtures); ``tests/conftest.py`` turns them into fixtures.
"""

from tests.harness.net import free_port, tcp_accepts, unix_accepts
from tests.harness.processes import ManagedProcess, ProcessStartError
from tests.harness.redis_servers import PrivateRedis, delete_keys_with_prefix

__all__ = [
    "ManagedProcess",
    "PrivateRedis",
    "ProcessStartError",
    "delete_keys_with_prefix",
    "free_port",
    "tcp_accepts",
    "unix_accepts",
]
