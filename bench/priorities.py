"""Real-time scheduling for the benchmarks, so that a shared machine's other work (another
engineer's test suite, a compiler) does not set the latency tail they measure.

Under ``--realtime`` a benchmark runs the processes it measures with Linux's SCHED_FIFO
policy: they preempt every ordinary (SCHED_OTHER) process, so the figures are those of a quiet
machine even when it is not. Three levels, highest first:

- ``INSTRUMENT`` (30): the measuring client (the legitimate caller of bench/key_flood.py);
- ``SERVER`` (20): what is measured: the ext_authz servers, Envoy, Redis;
- ``LOAD`` (10): the load generator (h2load), which must not delay a server's reply.

A process the benchmark treats as an attacker (the random-key flood) stays SCHED_OTHER: on a
real deployment it runs on somebody else's machine, not on the server's cores.

Needs root or CAP_SYS_NICE; the kernel still keeps 5 % of each second for ordinary processes
(``/proc/sys/kernel/sched_rt_runtime_us``), so a runaway cannot wedge the machine.
"""

from __future__ import annotations

import os
import subprocess

INSTRUMENT = 30
SERVER = 20
LOAD = 10


def realtime_allowed() -> bool:
    """True when this process may use SCHED_FIFO (tried on itself, then undone)."""
    try:
        before = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        os.sched_setscheduler(0, before[0], before[1])
    except (PermissionError, OSError):
        return False
    return True


def set_self(priority: int) -> None:
    """Run this process (and the children it starts from now on) at ``priority``."""
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))


def set_ordinary_self() -> None:
    """Back to the ordinary time-sharing policy (for a process playing the attacker)."""
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))


def set_process(pid: int, priority: int | None) -> None:
    """Every thread of ``pid`` at ``priority`` (None: back to SCHED_OTHER). ``chrt -a`` walks
    the threads; ``os.sched_setscheduler`` would change only the main one."""
    policy = ["-f", str(priority)] if priority is not None else ["-o", "0"]
    subprocess.run(["chrt", "-a", *policy[:1], "-p", policy[1], str(pid)], check=True,
                   capture_output=True)  # fmt: skip
