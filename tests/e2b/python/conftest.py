"""Shared fixtures: the real `e2b` SDK pointed at a real prismd by E2B_API_URL/E2B_SANDBOX_URL
(set by crates/prismd/tests/e2b.rs, or by hand: see docs/e2b.md)."""

import os
import time

import pytest

for var in ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY"):
    if not os.environ.get(var):
        raise RuntimeError(f"{var} must point the SDK at prismd (see docs/e2b.md)")


def sdk_version():
    """The installed e2b package's version as a tuple of ints (the suite runs against several)."""
    from importlib.metadata import version

    return tuple(int(p) for p in version("e2b").split(".")[:3] if p.isdigit())


def wait_for(what, cond, timeout=20.0):
    """Polls `cond` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def sandbox():
    from e2b import Sandbox

    sb = Sandbox.create(timeout=300, metadata={"suite": "e2b-sync"}, envs={"SUITE_VAR": "from-create"})
    yield sb
    sb.kill()
