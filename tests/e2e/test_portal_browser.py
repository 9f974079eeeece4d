"""The portal in a real browser: headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright; never a downloaded browser) loads /portal through a real Envoy, a key is pasted,
and what the page shows (the limit bars' used/remaining, the chart's daily points, the charges)
is compared with GET /v1/usage. A bad key, a suspended tenant and a stopped quotaplane each
show their message. The screenshot is saved under the test's tmp dir (its path is printed).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from quotaplane.storage.sql import migrate
from quotaplane_client.v1 import admin_pb2
from tests.harness.tenant_stack import Tenant, TenantStack, tenant_stack

pytestmark = pytest.mark.timeout(120)

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip(
        f"no Chromium at {CHROMIUM}: `apt-get install chromium` (make test does as root)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api")
PHONE = {"width": 390, "height": 844}


@dataclass
class Portal:
    stack: TenantStack
    tenant: Tenant
    suspended: Tenant
    browser: Any
    url: str


@pytest.fixture(scope="module")
def portal(
    tmp_path_factory: pytest.TempPathFactory, redis_url: str, redis_key_prefix: str
) -> Iterator[Portal]:
    workdir = tmp_path_factory.mktemp("portal")
    database = f"sqlite:///{workdir / 'ledger.db'}"
    migrate.upgrade(database)
    with tenant_stack(
        workdir,
        redis_url=redis_url,
        key_prefix=f"{redis_key_prefix}-portal",
        database=database,
        authz="http",
    ) as stack:
        tenant, suspended = stack.tenant("Acme Portal Ltd"), stack.tenant("Suspended Co")
        for _ in range(4):
            assert stack.rate({"x-api-key": tenant.key})[0] == 200
        assert stack.rate({"x-api-key": tenant.key}, bulk=True)[0] == 200
        stack.client.generate_invoice(tenant.id, datetime.now(UTC).strftime("%Y-%m"))
        stack.client.admin_call(
            "SuspendTenant", admin_pb2.SuspendTenantRequest(tenant_id=suspended.id)
        )
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox"]
            )
            try:
                url = f"http://127.0.0.1:{stack.envoy_port}/portal"
                yield Portal(stack, tenant, suspended, browser, url)
            finally:
                browser.close()


def open_with_key(portal: Portal, key: str) -> Any:
    page = portal.browser.new_context(viewport=PHONE).new_page()
    page.goto(portal.url)
    page.fill("#key", key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#usage:not([hidden]), #error:not([hidden])", timeout=15_000)
    return page


def shows_period(page: Any, period: str) -> None:
    """Wait until the page shows ``period`` (polled: the page's CSP forbids eval'd predicates)."""
    deadline = time.monotonic() + 15
    while page.inner_text("#period") != period or not page.is_visible("#usage"):
        assert time.monotonic() < deadline, page.inner_text("body")
        time.sleep(0.05)


def api_usage(portal: Portal) -> dict[str, Any]:
    status, _, body = portal.stack.get("/v1/usage", {"x-api-key": portal.tenant.key})
    assert status == 200
    result: dict[str, Any] = body
    return result


def test_the_page_shows_what_the_api_says(portal: Portal, tmp_path: Path) -> None:
    page = open_with_key(portal, portal.tenant.key)
    assert page.is_visible("#usage"), page.inner_text("body")
    assert not page.is_visible("#key-form") and not page.is_visible("#error")
    api = api_usage(portal)
    shown = page.eval_on_selector_all(
        "li.limit",
        "items => items.map(i => [i.dataset.limit, +i.dataset.used, +i.dataset.remaining])",
    )
    assert shown == [[x["name"], x["used"], x["remaining"]] for x in api["limits"]]
    assert shown and all(used == 14 for _, used, _ in shown)  # 4 x 1 + 1 x 10
    texts = page.eval_on_selector_all("li.limit .used", "spans => spans.map(s => s.textContent)")
    assert [t.split(" of ")[0] for t in texts] == [str(x["used"]) for x in api["limits"]]
    points = page.eval_on_selector_all(
        "#chart rect.bar", "bars => bars.map(b => [b.dataset.date, +b.dataset.quantity])"
    )
    days_in_period = (
        datetime.fromisoformat(api["period_end"]) - datetime.fromisoformat(api["period_start"])
    ).days
    assert len(points) == days_in_period
    expected = [[day["date"], day["quantity"]] for day in api["daily"]["requests"]]
    assert [point for point in points if point[1]] == expected
    assert page.get_attribute("#charges", "data-total") == api["charges"]["total"]
    assert page.inner_text("#plan") == api["tenant"]["plan"]
    assert page.eval_on_selector_all("#invoices tr", "rows => rows.length") == len(api["invoices"])
    periods = page.eval_on_selector_all("#period-select option", "os => os.map(o => o.value)")
    assert periods == [api["period"]]  # the current period; each invoice's period would join
    page.evaluate(  # a past period, as if it had an invoice: the page asks the API for it
        "() => { const s = document.getElementById('period-select');"
        " s.append(new Option('2001-02', '2001-02')); s.value = '2001-02';"
        " s.dispatchEvent(new Event('change')); }"
    )
    shows_period(page, "2001-02")
    assert page.eval_on_selector_all("li.limit", "items => items.length") == 0  # past: no limits
    assert page.get_attribute("#charges", "data-total") is None  # and no invoice that month
    assert page.eval_on_selector_all("#chart rect.bar", "bars => bars.length") == 28
    page.select_option("#period-select", api["period"])
    shows_period(page, api["period"])
    assert page.get_attribute("#charges", "data-total") == api["charges"]["total"]
    stored = page.evaluate("sessionStorage.getItem('quotaplane.apiKey')")
    assert stored == portal.tenant.key  # in the tab's session storage ...
    assert page.context.cookies() == [] and portal.tenant.key not in page.url  # ... only
    shot = tmp_path / "portal.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"portal screenshot: {shot}")
    if target := os.environ.get("QUOTAPLANE_PORTAL_SCREENSHOT"):
        shutil.copyfile(shot, target)  # how docs/portal.png is made
    page.reload()  # the key is remembered for the tab: no second prompt
    page.wait_for_selector("#usage:not([hidden])", timeout=15_000)
    page.context.close()


def test_a_bad_key_shows_the_error_and_asks_again(portal: Portal) -> None:
    page = open_with_key(portal, "qp_live_not-a-real-key")
    assert page.get_attribute("#error", "data-status") == "401"
    assert "not accepted" in page.inner_text("#error")
    assert page.is_visible("#key-form") and not page.is_visible("#usage")
    assert page.evaluate("sessionStorage.getItem('quotaplane.apiKey')") is None
    page.context.close()


def test_a_suspended_tenant_is_told_so(portal: Portal) -> None:
    page = open_with_key(portal, portal.suspended.key)
    assert page.get_attribute("#error", "data-status") == "403"
    assert "suspended" in page.inner_text("#error")
    page.context.close()


def test_quotaplane_unavailable_is_said_plainly(portal: Portal) -> None:
    """Last: stops quotaplane (Envoy fails closed with 503 and serves no portal page)."""
    page = portal.browser.new_context(viewport=PHONE).new_page()
    page.goto(portal.url)
    portal.stack.serve.process.close()
    page.fill("#key", portal.tenant.key)
    page.click("#key-form button[type=submit]")
    page.wait_for_selector("#error:not([hidden])", timeout=15_000)
    assert page.get_attribute("#error", "data-status") in {"503", "0"}
    assert "unavailable" in page.inner_text("#error")
    page.context.close()
