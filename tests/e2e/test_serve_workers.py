"""`quotaplane serve --workers N`: N replicas on shared ports, supervised by the parent."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness.gateway import request
from tests.harness.net import free_port
from tests.harness.quotaplane_server import ServeProcess, serve_process

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]
SERVING = "quotaplane.app.serve: quotaplane serving"


def children(pid: int) -> list[int]:
    """The worker processes of a parent (not its embedded valkey)."""
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split() if b"--worker-index" in _cmdline(int(child))]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        return str(answer.read().decode())


def sample(text: str, pattern: str) -> float:
    """The sum of the samples whose line matches ``pattern`` (a regex up to the value)."""
    found = re.findall(rf"^{pattern}\S* ([0-9.e+]+)$", text, re.MULTILINE)
    return sum(float(value) for value in found)


def eventually(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(0.1)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[tuple[ServeProcess, int]]:
    metrics = free_port()
    serve = serve_process(
        tmp_path,  # embedded valkey and SQLite: the parent starts and migrates them once
        env={"QUOTAPLANE_METRICS_ADDR": f"127.0.0.1:{metrics}"},
        args=("--workers", "2"),
    )
    with serve.process:
        serve.process.start().wait_for_port(serve.http_port, timeout=60)
        eventually(lambda: serve.process.log_tail(400).count(SERVING) == 2, 60, "both workers")
        yield serve, metrics


def test_every_worker_serves_the_shared_ports(workers: tuple[ServeProcess, int]) -> None:
    serve, _ = workers
    assert serve.process.pid is not None
    assert len(children(serve.process.pid)) == 2
    log = serve.process.log_tail(400)
    assert len(re.findall(r"HTTP ext_authz listening", log)) == 2
    assert len(re.findall(r"grpc server listening", log)) == 2
    statuses = {request(serve.http_port, "GET", "/v1/rate")[0] for _ in range(20)}
    assert statuses == {401}  # answered by whichever worker the kernel picked


def test_one_scrape_sums_the_metrics_of_every_worker(workers: tuple[ServeProcess, int]) -> None:
    serve, metrics = workers
    for _ in range(30):  # a new connection each: the kernel spreads them over the workers
        assert request(serve.http_port, "GET", "/v1/rate")[0] == 401
    text = scrape(metrics)
    decided = sample(text, r'quotaplane_quota_decisions_total\{[^}]*outcome="unauthenticated"')
    assert decided == 30
    # Gauges stay per worker (a pid label): both workers write to the one endpoint.
    eventually(
        lambda: (
            len(
                set(re.findall(r'quotaplane_usage_flush_lag_seconds\{pid="(\d+)"', scrape(metrics)))
            )
            == 2
        ),
        10,
        "a gauge from each worker",
    )


def test_a_dead_worker_is_restarted_and_logged(workers: tuple[ServeProcess, int]) -> None:
    serve, _ = workers
    assert serve.process.pid is not None
    victim = children(serve.process.pid)[1]
    os.kill(victim, signal.SIGKILL)
    eventually(lambda: "worker exited; restarting it" in serve.process.log_tail(), 10, "the log")
    eventually(lambda: victim not in children(serve.process.pid or 0), 10, "a new worker")
    eventually(lambda: serve.process.log_tail(400).count(SERVING) == 3, 60, "a new worker serving")
    assert len(children(serve.process.pid)) == 2


def test_sigterm_drains_every_worker_and_the_parent_exits_cleanly(
    workers: tuple[ServeProcess, int],
) -> None:
    serve, _ = workers
    assert serve.process.pid is not None
    pids = children(serve.process.pid)
    assert serve.process.terminate(timeout=40) == 0
    assert not [pid for pid in pids if Path(f"/proc/{pid}").exists()]
    assert serve.process.log_tail().count("quotaplane.app.serve: stopped") >= 2
