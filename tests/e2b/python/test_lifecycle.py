"""Control plane through the real SDK: create, info, list + pagination + filters, timeout,
pause/connect (resume), kill, errors."""

import datetime
import uuid

import pytest
from e2b import NotFoundException, Sandbox, SandboxException
from e2b.sandbox.sandbox_api import SandboxQuery, SandboxState

from conftest import sdk_version


def test_create_reports_metadata_and_timeout():
    sb = Sandbox.create(timeout=120, metadata={"owner": "alice", "run": "1"})
    try:
        info = sb.get_info()
        assert info.sandbox_id == sb.sandbox_id
        assert info.metadata == {"owner": "alice", "run": "1"}
        assert info.state == SandboxState.RUNNING
        left = (info.end_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        assert 60 < left <= 121, left
        assert sb.is_running()
    finally:
        sb.kill()


def test_set_timeout_moves_the_end():
    sb = Sandbox.create(timeout=60)
    try:
        before = sb.get_info().end_at
        sb.set_timeout(3600)
        after = sb.get_info().end_at
        assert (after - before).total_seconds() > 3000
    finally:
        sb.kill()


def test_list_filters_and_paginates():
    tag = uuid.uuid4().hex
    boxes = [Sandbox.create(timeout=120, metadata={"tag": tag, "i": str(i)}) for i in range(3)]
    other = Sandbox.create(timeout=120, metadata={"tag": "someone-else"})
    try:
        paginator = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}), limit=2)
        first = paginator.next_items()
        assert len(first) == 2
        assert paginator.has_next
        second = paginator.next_items()
        assert len(second) == 1
        assert not paginator.has_next
        ids = {s.sandbox_id for s in first + second}
        assert ids == {b.sandbox_id for b in boxes}
        # Two metadata pairs must both match.
        only = Sandbox.list(query=SandboxQuery(metadata={"tag": tag, "i": "1"})).next_items()
        assert [s.sandbox_id for s in only] == [boxes[1].sandbox_id]
        # State filter: pause one; it is listed as paused and not as running.
        boxes[0].pause(mode="filesystem")
        paused = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.PAUSED])).next_items()
        assert [s.sandbox_id for s in paused] == [boxes[0].sandbox_id]
        running = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.RUNNING])).next_items()
        assert {s.sandbox_id for s in running} == {boxes[1].sandbox_id, boxes[2].sandbox_id}
    finally:
        for b in boxes + [other]:
            b.kill()


def test_pause_then_connect_resumes_with_files_and_envs():
    sb = Sandbox.create(timeout=300, envs={"KEPT": "yes"})
    try:
        sb.files.write("/root/kept.txt", "survives")
        if sdk_version() >= (2, 27):
            assert sb.pause(mode="filesystem") is True
            assert sb.pause(mode="filesystem") is False  # already paused
        else:  # e2b 2.26: pause() returns nothing; the state below is the check
            sb.pause()
        assert sb.get_info().state == SandboxState.PAUSED
        assert not sb.is_running()
        again = Sandbox.connect(sb.sandbox_id, timeout=300)
        assert again.get_info().state == SandboxState.RUNNING
        assert again.files.read("/root/kept.txt") == "survives"
        assert again.commands.run("echo $KEPT").stdout == "yes\n"
    finally:
        sb.kill()


def test_kill_and_unknown_ids():
    sb = Sandbox.create(timeout=60)
    assert Sandbox.kill(sb.sandbox_id) is True
    assert Sandbox.kill(sb.sandbox_id) is False
    with pytest.raises(NotFoundException):
        Sandbox.get_info("0" * 32)
    with pytest.raises((NotFoundException, SandboxException)):
        Sandbox.connect("0" * 32)
    # The data plane of a killed sandbox answers like E2B's proxy: the sandbox is gone.
    with pytest.raises(Exception) as e:
        sb.commands.run("true")
    assert "not running" in str(e.value) or "timeout" in str(e.value).lower()


def test_unknown_template_is_an_error():
    with pytest.raises(SandboxException) as e:
        Sandbox.create(template="no-such-template-xyz", timeout=60)
    assert "no-such-template-xyz" in str(e.value)


def test_list_by_template():
    if "template" not in SandboxQuery.__init__.__code__.co_varnames:
        pytest.skip(f"SandboxQuery(template=) needs a newer e2b than {sdk_version()}")
    sb = Sandbox.create(timeout=60, metadata={"t": "tmpl"})
    try:
        listed = Sandbox.list(query=SandboxQuery(template="base", metadata={"t": "tmpl"})).next_items()
        assert [s.sandbox_id for s in listed] == [sb.sandbox_id]
        assert listed[0].template_id == "base"
        none = Sandbox.list(query=SandboxQuery(template="other", metadata={"t": "tmpl"})).next_items()
        assert none == []
    finally:
        sb.kill()


def test_metrics_report_current_usage():
    sb = Sandbox.create(timeout=60)
    try:
        sb.commands.run("python3 -c 'x = bytearray(20 << 20); import time; time.sleep(0.1)'")
        samples = sb.get_metrics()
        assert len(samples) == 1
        m = samples[0]
        assert m.mem_used > 0
        assert m.cpu_count >= 1
        assert m.cpu_used_pct >= 0
    finally:
        sb.kill()
