"""``quotaplane serve --workers N``: N full replicas on one host, sharing the ports.

The parent owns what must exist once per host and hands it to every worker:

- the embedded valkey (started once, here, when no Redis URL is set) and the embedded SQLite
  ledger (migrated once), so the workers get explicit URLs and none of them takes the data
  directory's lock;
- the admin token (generated once when none is set);
- the listening ports: every worker binds the gRPC and HTTP ext_authz ports with SO_REUSEPORT,
  so the kernel spreads connections over them. Ports must therefore be fixed (not 0).

Each worker is ``quotaplane serve`` itself, configured through the environment: the same
settings, ``QUOTAPLANE_WORKERS=1``, no metrics endpoint of its own, and, for worker 0 only, the
Stripe webhook endpoint.

Metrics: prometheus-client's multiprocess mode. Every worker writes its samples to files in a
directory the parent creates (``PROMETHEUS_MULTIPROC_DIR``); the parent serves one /metrics on
QUOTAPLANE_METRICS_ADDR that adds up every worker's counters and histograms, so one scrape
sees the whole server. Gauges carry a ``pid`` label (one series per worker); the process_*
metrics of a single server are not exported in this mode.

Supervision: a worker that exits is logged and started again; one that keeps dying within
``QUICK_EXIT_S`` of its start ``MAX_QUICK_EXITS`` times in a row stops the whole server (a bad
setting would otherwise restart forever). SIGTERM/SIGINT are forwarded to every worker, which
drain as a single server does; after the shutdown grace plus ``KILL_AFTER_S`` the rest are
killed. The workers die with the parent (PR_SET_PDEATHSIG) if it is killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess, start_http_server

from quotaplane.config import ConfigError, Settings

log = logging.getLogger(__name__)

QUICK_EXIT_S = 5.0
MAX_QUICK_EXITS = 5
KILL_AFTER_S = 10.0
POLL_S = 0.2
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the forked child
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def check_ports(settings: Settings) -> None:
    """Shared ports must be fixed: with port 0 every worker would get a port of its own."""
    for env, addr in (("QUOTAPLANE_GRPC_ADDR", settings.grpc_addr),
                      ("QUOTAPLANE_AUTHZ_HTTP_ADDR", settings.authz_http_addr)):  # fmt: skip
        if addr != "off" and _port(addr) == 0:
            raise ConfigError(f"{env}={addr!r}: --workers > 1 needs a fixed port, not 0")


def worker_environment(base: Mapping[str, str], index: int) -> dict[str, str]:
    """The settings of worker ``index`` as QUOTAPLANE_* variables."""
    env = {**base, "QUOTAPLANE_WORKERS": "1", "QUOTAPLANE_METRICS_ADDR": "off"}
    if index > 0:
        env["QUOTAPLANE_STRIPE_WEBHOOK_ADDR"] = "off"  # one endpoint: Stripe posts to one URL
    return env


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)
    quick_exits: int = 0


class Supervisor:
    """Starts, restarts and stops the worker processes."""

    def __init__(
        self, settings: Settings, environments: list[dict[str, str]], metrics_dir: Path
    ) -> None:
        self._settings = settings
        self._environments = environments
        self._metrics_dir = metrics_dir
        self._workers: list[_Worker] = []
        self._stopping = False

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "quotaplane.cli", "serve", "--worker-index", str(index)]
        env = {**os.environ, **self._environments[index]}
        return subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)

    def run(self) -> int:
        """Until SIGTERM/SIGINT (then drain: 0) or a worker that cannot start (3)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        self._workers = [_Worker(i, self._spawn(i)) for i in range(len(self._environments))]
        log.info("workers started", extra={"pids": [w.process.pid for w in self._workers]})
        failed = False
        while not self._stopping and not failed:
            time.sleep(POLL_S)
            failed = not all(self._restart_if_dead(worker) for worker in self._workers)
        self._stop_all()
        return 3 if failed else 0

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _restart_if_dead(self, worker: _Worker) -> bool:
        code = worker.process.poll()
        if code is None or self._stopping:
            return True
        quick = time.monotonic() - worker.started < QUICK_EXIT_S
        worker.quick_exits = worker.quick_exits + 1 if quick else 0
        log.error(
            "worker exited; restarting it",
            extra={"worker": worker.index, "pid": worker.process.pid, "exit_code": code},
        )
        # Its gauges go; its counters stay in the sum (a counter must not go backwards).
        multiprocess.mark_process_dead(worker.process.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
        if worker.quick_exits >= MAX_QUICK_EXITS:
            log.error("worker keeps exiting at start; stopping", extra={"worker": worker.index})
            return False
        worker.process = self._spawn(worker.index)
        worker.started = time.monotonic()
        return True

    def _stop_all(self) -> None:
        log.info("stopping workers", extra={"workers": len(self._workers)})
        for worker in self._workers:
            with contextlib.suppress(ProcessLookupError):
                worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._settings.shutdown_grace.total_seconds() + KILL_AFTER_S
        for worker in self._workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker did not stop in time; killing it", extra={"worker": worker.index})
                worker.process.kill()
                worker.process.wait()


@contextlib.contextmanager
def shared_resources(settings: Settings) -> Iterator[dict[str, str]]:
    """Embedded valkey, embedded ledger and the tokens, once: their settings as variables."""
    from quotaplane.app.credentials import resolve_tokens
    from quotaplane.app.embedded import start_embedded

    shared: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        redis_url, database_url = start_embedded(settings, stack)
        shared["QUOTAPLANE_REDIS_URL"] = redis_url
        shared["QUOTAPLANE_DATABASE_URL"] = database_url
        # Every role's token once, here: workers generating them at the same time would race.
        tokens = resolve_tokens(settings)
        shared["QUOTAPLANE_ADMIN_TOKEN"] = tokens.admin
        shared["QUOTAPLANE_SERVICE_TOKEN"] = tokens.service
        shared["QUOTAPLANE_BILLING_TOKEN"] = tokens.billing
        yield shared


@contextlib.contextmanager
def metrics_endpoint(settings: Settings) -> Iterator[Path]:
    """A fresh multiprocess directory, and the one /metrics that sums what workers write there."""
    with tempfile.TemporaryDirectory(prefix="quotaplane-metrics-") as directory:
        if settings.metrics_addr == "off":
            yield Path(directory)
            return
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
        host, _, port = settings.metrics_addr.rpartition(":")
        try:
            server, thread = start_http_server(int(port), addr=host.strip("[]"), registry=registry)
        except OSError as error:  # as in one process: the quota service runs without it
            log.error("metrics endpoint not started", extra={"error": str(error)})
            yield Path(directory)
            return
        log.info("metrics endpoint listening (all workers)", extra={"addr": settings.metrics_addr})
        try:
            yield Path(directory)
        finally:
            server.shutdown()
            thread.join(timeout=5)


def supervise(settings: Settings, raw: Mapping[str, str]) -> int:
    """Run ``settings.workers`` workers; ``raw``: every setting's variable and its text."""
    check_ports(settings)
    with shared_resources(settings) as shared, metrics_endpoint(settings) as metrics_dir:
        base = {**raw, **shared, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
        environments = [worker_environment(base, i) for i in range(settings.workers)]
        return Supervisor(settings, environments, metrics_dir).run()
