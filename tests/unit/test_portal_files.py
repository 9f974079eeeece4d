"""The portal's static files ship in the package and load nothing from elsewhere (no CDN)."""

from __future__ import annotations

import re

from quotaplane.transport.http.tenant_api import load_portal

SVG_NAMESPACE = "http://www.w3.org/2000/svg"  # a name, never fetched


def test_the_portal_ships_its_page_script_and_style() -> None:
    files = load_portal()
    assert files["/portal"] == files["/portal/"] == files["/portal/index.html"]
    assert {"/portal/portal.js", "/portal/portal.css"} <= files.keys()
    assert files["/portal/portal.js"][0].startswith(b"text/javascript")


def test_nothing_is_loaded_from_another_origin() -> None:
    for path, (_, body) in load_portal().items():
        text = body.decode().replace(SVG_NAMESPACE, "")
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", text), path


def test_the_key_is_kept_in_session_storage_never_a_cookie_or_url() -> None:
    script = load_portal()["/portal/portal.js"][1].decode()
    assert "sessionStorage.setItem" in script
    assert "document.cookie" not in script and "localStorage" not in script
    assert 'credentials: "omit"' in script
    assert 'method="post"' in load_portal()["/portal"][1].decode()  # no key in a GET URL
