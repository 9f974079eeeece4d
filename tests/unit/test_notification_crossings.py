"""Which decisions cross a quota threshold: exactly one per boundary, never for looks or denials."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from quotaplane.domain.quota.alerts import crossings
from quotaplane.domain.quota.decisions import Decision, DecisionCode, LimitState, QuotaRequest
from quotaplane.integrations.notify.webhooks import payload, sign, verify

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
TENANT = "6f1c7a1e-0000-4000-8000-000000000001"


def _decision(
    used_after: int, cost: int, quota: int = 100, window: str = "month", **kw: object
) -> Decision:
    # Past the quota only a `bill` limit admits; the excess is reported as overage.
    overage = max(0, used_after - quota)
    state = LimitState("requests", window, quota, max(0, quota - used_after), NOW, "bill", overage)
    return Decision(allowed=kw.get("allowed", True), code=DecisionCode.OK, cost=cost,  # type: ignore[arg-type]
                    limits=(state,), replayed=bool(kw.get("replayed", False)))  # fmt: skip


def _request(cost: int, dry_run: bool = False) -> QuotaRequest:
    return QuotaRequest(tenant_id=TENANT, metric="requests", cost=cost, dry_run=dry_run)


def _thresholds(used_after: int, cost: int, **kw: object) -> list[int]:
    dry = bool(kw.pop("dry_run", False))
    found = crossings(_request(cost, dry), _decision(used_after, cost, **kw), NOW, (80, 100))
    return [alert.threshold for alert in found]


def test_the_unit_that_reaches_the_boundary_crosses_it() -> None:
    assert _thresholds(79, 1) == []
    assert _thresholds(80, 1) == [80]
    assert _thresholds(81, 1) == []
    assert _thresholds(100, 1) == [100]


def test_one_big_decision_can_cross_both() -> None:
    assert _thresholds(100, 30) == [80, 100]


def test_looks_denials_replays_and_rate_windows_never_notify() -> None:
    assert _thresholds(80, 1, dry_run=True) == []
    assert _thresholds(80, 1, allowed=False) == []
    assert _thresholds(80, 1, replayed=True) == []
    assert _thresholds(80, 1, window="second") == []


@given(
    st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=60), st.integers(1, 250)
)
def test_any_sequence_of_admissions_crosses_each_reached_boundary_exactly_once(
    costs: list[int], quota: int
) -> None:
    used, seen = 0, []
    for cost in costs:
        used += cost
        decision = _decision(used, cost, quota=quota)
        seen += [a.threshold for a in crossings(_request(cost), decision, NOW, (80, 100))]
    reached = [t for t in (80, 100) if used >= -(-quota * t // 100)]
    assert sorted(seen) == reached


def test_payload_and_signature_round_trip() -> None:
    alert = crossings(_request(1), _decision(80, 1), NOW, (80,))[0]
    body = payload("n-1", alert)
    header = sign(body, "s3cret", 1_800_000_000)
    assert verify(body, header, "s3cret", now=1_800_000_010)
    assert not verify(body, header, "other", now=1_800_000_010)
    assert not verify(body + b" ", header, "s3cret", now=1_800_000_010)
    assert not verify(body, header, "s3cret", now=1_800_000_000 + 3600)  # too old: a replay
