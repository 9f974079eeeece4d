"""The report of bench/envoy_load.py: figures, target ratios, CPU per decision, decision check."""

from __future__ import annotations

import argparse
import os

from envoy_arms import Arm
from h2load import Result

# A pass ends with up to ``connections`` requests in flight: quotaplane may have counted them
# while h2load no longer waited. More than that per pass, or fewer than the 2xx, is wrong.
TARGETS = (
    ("quotaplane-http-1", "trivial-grpc", 1.5),
    ("quotaplane-http-1", "trivial-http", 0.5),
)
ADDED_P99_TARGET_MS = 1.0


def row(name: str, result: Result) -> str:
    return (
        f"{name:<30} {result.rps:>8.0f} {result.p50:>7.2f} {result.p99:>7.2f} {result.p999:>8.2f}"
        f" {result.done - result.ok_2xx:>7d} {result.done:>8d}"
    )


def authz_stat(stats: dict[str, int], outcome: str) -> int:
    # http.<listener>.ext_authz.<filter>.<outcome>; the cluster.* copies would count twice.
    return sum(v for k, v in stats.items() if k.startswith("http.") and k.endswith(f".{outcome}"))


def report(
    arms: dict[str, Arm],
    rate: float,
    counter: int,
    stats: dict[str, dict[str, int]],
    args: argparse.Namespace,
    cpus: tuple[set[int] | None, set[int] | None],
) -> None:
    authz_cpus, rest_cpus = (",".join(map(str, sorted(c or ()))) for c in cpus)
    where = (
        f"1-process ext_authz on CPU {authz_cpus}, rest on CPU {rest_cpus}" if cpus[0] else "none"
    )
    print(f"h2load --h1 -c {args.connections} -t 1, {args.rounds} x {args.duration}s per arm and "
          f"load, {os.cpu_count()} CPUs, Envoy --concurrency 1, placement: {where}"
          f"{', real-time priorities' if args.realtime else ''}")  # fmt: skip
    print(f"{'pass':<30} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} "
          f"{'non-2xx':>7} {'done':>8}")  # fmt: skip
    for name, arm in arms.items():
        print(row(f"{name} peak", arm.passes["peak"]))
    for name, arm in arms.items():
        if "half" in arm.passes:
            print(row(f"{name} half @ {rate:.0f}/s", arm.passes["half"]))
    for arm_name, base, target in TARGETS:
        ratio = arms[arm_name].passes["peak"].rps / arms[base].passes["peak"].rps
        rounds = " ".join(
            f"{a.rps / b.rps:.2f}"
            for a, b in zip(arms[arm_name].rounds["peak"], arms[base].rounds["peak"], strict=True)
        )
        print(
            f"ratio {arm_name}/{base} at peak: {ratio:.2f} (target >= {target}; rounds: {rounds})"
        )
    for base in ("no-authz", "trivial-http"):
        added = arms["quotaplane-http-1"].passes["half"].p99 - arms[base].passes["half"].p99
        print(f"p99 added by quotaplane-http-1 over {base} at {rate:.0f} req/s (half its peak): "
              f"{added:.2f} ms (target <= {ADDED_P99_TARGET_MS} ms over no-authz)")  # fmt: skip
    for name, arm in arms.items():
        print_cpu(name, arm)
    check_decisions(arms, counter, stats, args)


def print_cpu(name: str, arm: Arm) -> None:
    """% of one core per process during the peak passes, and server CPU us per request."""
    per_request = 10_000 / arm.passes["peak"].rps  # % of a core x 10^4 / (req/s) = us/request
    server = sum(v for k, v in arm.cpu.items() if k.startswith("server"))
    shares = ", ".join(f"{k} {v:.0f}%" for k, v in arm.cpu.items() if not k.startswith("server"))
    decision = (
        f"server {server:.0f}% = {server * per_request:.0f} us per decision" if server else ""
    )
    print(f"CPU during {name} peak, % of one core: {decision} {shares}".replace("  ", " "))


def check_decisions(
    arms: dict[str, Arm], counter: int, stats: dict[str, dict[str, int]], args: argparse.Namespace
) -> None:
    for name, arm in arms.items():
        got = sum(result.ok_2xx for result in arm.passes.values())
        ok, denied, error = (authz_stat(stats[name], o) for o in ("ok", "denied", "error"))
        print(
            f"{name}: h2load 2xx {got}, Envoy ext_authz ok {ok} / denied {denied} / error "
            f"{error}, OpenClaw 2xx {stats[name].get('cluster.openclaw.upstream_rq_2xx', 0)}"
        )
    deciding = [arm for arm in arms.values() if arm.decides]
    sent = sum(result.ok_2xx for arm in deciding for result in arm.passes.values())
    passes = sum(len(arm.passes) - 1 + len(arm.rounds["peak"]) for arm in deciding)
    slack = passes * args.connections
    errors = sum(authz_stat(stats[arm.name], o) for arm in deciding for o in ("denied", "error"))
    verdict = "OK" if 0 <= counter - sent <= slack and errors == 0 else "MISMATCH"
    print(f"decision check: quotaplane Redis counter {counter}, 2xx through its three arms {sent} "
          f"(cut-off slack {slack}), ext_authz denials/errors {errors} -> {verdict}")  # fmt: skip
