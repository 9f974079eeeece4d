"""h2load runs and their figures, shared by the load benchmarks in bench/.

One h2load invocation (Debian package nghttp2-client) either closed loop (``-D`` seconds or
``-n`` requests, ``connections`` x ``streams`` always in flight) or open loop (``--rps``: one
request in flight per connection, so h2load's schedule, not its pipelining, sets the arrival
rate). Latency percentiles come from h2load's per-request log, status counts from the same log;
the CPU each process (and the machine) used during a pass comes from /proc.
"""

from __future__ import annotations

import os
import re
import resource
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Result:
    rps: float
    done: int
    succeeded: int
    errors: int
    p50: float
    p99: float
    p999: float
    ok_2xx: int = 0  # responses with a 2xx status (from the per-request log)
    latencies: list[float] = field(default_factory=list, repr=False)  # ms, sorted

    def row(self, name: str) -> str:
        return (
            f"{name:<22} {self.rps:>9.0f} {self.p50:>8.2f} {self.p99:>8.2f} {self.p999:>8.2f}"
            f" {self.errors:>7d} {self.done:>8d}"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


def run(
    url: str,
    body: Path | None,
    log: Path,
    *,
    connections: int,
    streams: int,
    duration: int = 0,
    count: int = 0,
    rps: float = 0,
    headers: Sequence[str] = (),
    h1: bool = False,
    stagger_ms: int = 0,
) -> Result:
    """One h2load pass; ``rps`` (total, spread over the connections) makes it open loop.

    Open loop, h2load starts every connection's request timer at once, so all connections send
    together: bursts of ``connections`` requests, not a steady rate. ``stagger_ms`` opens them
    that many ms apart instead (h2load's ``-r 1 --rate-period``, which needs ``count``, not
    ``duration``), so their sends interleave.
    """
    length = ["-n", str(count)] if count else ["-D", str(duration)]
    argv = ["h2load", *length, "-c", str(connections), "-m", str(1 if rps else streams),
            "-t", "1", *(["-d", str(body)] if body else []), "--log-file", str(log)]  # fmt: skip
    for header in headers:
        argv += ["-H", header]
    if h1:
        argv.append("--h1")
    if rps and stagger_ms:
        argv += ["--rps", f"{rps / connections:.3f}", "-r", "1", "--rate-period", f"{stagger_ms}ms"]
    elif rps:
        argv += ["--rps", f"{max(1, round(rps / connections))}"]
    argv.append(url)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rate = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))  # type: ignore[union-attr]
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded",
        out,
    )
    assert counts is not None, out
    done, succeeded = int(counts.group(3)), int(counts.group(4))
    entries = [line.split("\t") for line in log.read_text().splitlines() if line.strip()]
    latencies = sorted(int(entry[2]) / 1000 for entry in entries)
    return Result(
        rps=rate,
        done=done,
        succeeded=succeeded,
        errors=done - succeeded,
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        p999=percentile(latencies, 99.9),
        ok_2xx=sum(1 for entry in entries if entry[1].startswith("2")),
        latencies=latencies,
    )


def pooled(results: Sequence[Result]) -> Result:
    """Several passes of equal length as one: mean rate, summed counts, percentiles over
    every request of every pass."""
    latencies = sorted(latency for result in results for latency in result.latencies)
    return Result(
        rps=sum(result.rps for result in results) / len(results),
        done=sum(result.done for result in results),
        succeeded=sum(result.succeeded for result in results),
        errors=sum(result.errors for result in results),
        p50=percentile(latencies, 50),
        p99=percentile(latencies, 99),
        p999=percentile(latencies, 99.9),
        ok_2xx=sum(result.ok_2xx for result in results),
        latencies=latencies,
    )


def percentile(sorted_values: list[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(len(sorted_values) * pct / 100))
    return sorted_values[index]


# --- CPU accounting (from /proc: every thread of a process, and the whole machine) -------


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process (all its threads) so far."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks[:8]) - idle) / hz, sum(ticks[:8]) / hz


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def with_cpu(
    pids: dict[str, int | None], pass_: Callable[[], Result]
) -> tuple[Result, dict[str, float]]:
    """Run one pass; also return the CPU each process used meanwhile, in % of one core."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    load_before, (busy_before, total_before) = children_cpu(), machine_busy()
    result = pass_()
    busy, total = machine_busy()
    wall = (total - total_before) / (os.cpu_count() or 1)
    used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
    used["h2load"] = children_cpu() - load_before
    # Everything else: the idle arm, this script, and whatever else the machine runs.
    used["other"] = max(0.0, (busy - busy_before) - sum(used.values()))
    return result, {name: 100 * seconds / wall for name, seconds in used.items()}
