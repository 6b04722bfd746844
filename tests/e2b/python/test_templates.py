"""E2B's `template` argument names a Prism template: built here through Prism's own API, then
used by the unmodified SDK (its setup's files are there; nothing re-runs)."""

import os

import httpx
from e2b import Sandbox


def test_sdk_creates_from_a_prism_template():
    api = os.environ["E2B_API_URL"].rstrip("/")
    spec = {
        "name": "e2b-tpl",
        "run": ["mkdir -p /srv && echo from-template > /srv/e2b && echo x >> /srv/runs"],
        "env": {"TPL_VAR": "tpl"},
    }
    # With auth on (crates/prismd/tests/e2b.rs), the E2B key is a Prism key in either form.
    headers = {"X-API-KEY": os.environ["E2B_API_KEY"]}
    r = httpx.post(f"{api}/v1/templates", json=spec, headers=headers, timeout=120)
    assert r.status_code == 201, r.text
    version = r.json()["version"]
    sb = Sandbox.create(template="e2b-tpl", timeout=120)
    try:
        out = sb.commands.run("cat /srv/e2b /srv/runs; echo $TPL_VAR")
        assert out.stdout == "from-template\nx\ntpl\n", out
        assert sb.files.read("/srv/e2b") == "from-template\n"
        assert sb.get_info().template_id == f"e2b-tpl:{version}"
    finally:
        sb.kill()
