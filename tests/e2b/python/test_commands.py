"""commands.run (foreground, background, stdin, kill, errors) and pty through the real SDK."""

import pytest
from e2b import CommandExitException
from e2b.sandbox.commands.command_handle import PtySize

from conftest import wait_for


def test_foreground_run_sees_create_envs_and_call_envs(sandbox):
    r = sandbox.commands.run("echo $SUITE_VAR $CALL_VAR; pwd", envs={"CALL_VAR": "per-call"}, cwd="/tmp")
    assert r.exit_code == 0
    assert r.stdout == "from-create per-call\n/tmp\n"
    assert r.stderr == ""


def test_streaming_callbacks_get_both_streams(sandbox):
    out, err = [], []
    r = sandbox.commands.run(
        "for i in 1 2 3; do echo out$i; echo err$i >&2; done",
        on_stdout=out.append,
        on_stderr=err.append,
    )
    assert "".join(out) == "out1\nout2\nout3\n"
    assert "".join(err) == "err1\nerr2\nerr3\n"
    assert r.stdout == "out1\nout2\nout3\n"


def test_non_zero_exit_raises_with_output(sandbox):
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.run("echo partial; echo bad >&2; exit 7")
    assert e.value.exit_code == 7
    assert e.value.stdout == "partial\n"
    assert e.value.stderr == "bad\n"


def test_background_process_is_listed_and_killed(sandbox):
    h = sandbox.commands.run("sleep 600", background=True)
    assert any(p.pid == h.pid for p in sandbox.commands.list())
    assert sandbox.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert e.value.exit_code != 0
    wait_for("the killed process to leave the list", lambda: all(p.pid != h.pid for p in sandbox.commands.list()))
    # Killing it again: the SDK reports "not found" as False.
    assert sandbox.commands.kill(h.pid) is False


def test_stdin_is_delivered_and_closed(sandbox):
    if not hasattr(sandbox.commands, "close_stdin"):
        # Older SDKs (e2b 2.26) can send stdin but not close it: read a known length instead.
        h = sandbox.commands.run("head -c 12; echo done", background=True, stdin=True)
        sandbox.commands.send_stdin(h.pid, "hello ")
        sandbox.commands.send_stdin(h.pid, "world\n")
        r = h.wait()
        assert r.exit_code == 0
        assert r.stdout == "hello world\ndone\n"
        return
    h = sandbox.commands.run("cat; echo done", background=True, stdin=True)
    sandbox.commands.send_stdin(h.pid, "hello ")
    h.send_stdin("world\n")
    h.close_stdin()
    r = h.wait()
    assert r.exit_code == 0
    assert r.stdout == "hello world\ndone\n"


def test_connect_to_a_running_command(sandbox):
    h = sandbox.commands.run("sleep 0.5; echo late", background=True)
    again = sandbox.commands.connect(h.pid)
    assert again.wait().stdout.endswith("late\n")


def test_pty_create_send_resize(sandbox):
    data = bytearray()
    h = sandbox.pty.create(PtySize(rows=24, cols=80), envs={"PS1": "$ "})
    sandbox.pty.send_stdin(h.pid, b"stty size\n")

    def drain_until(needle):
        for _stdout, _stderr, pty in h:
            if pty:
                data.extend(pty)
            if needle in data:
                return True
        return False

    assert drain_until(b"24 80")
    sandbox.pty.resize(h.pid, PtySize(rows=40, cols=100))
    sandbox.pty.send_stdin(h.pid, b"stty size; exit 3\n")
    assert drain_until(b"40 100")
    with pytest.raises(CommandExitException) as e:
        h.wait()
    assert e.value.exit_code == 3


def test_pty_kill(sandbox):
    h = sandbox.pty.create(PtySize(rows=10, cols=40))
    assert sandbox.pty.kill(h.pid) is True
    with pytest.raises(CommandExitException):
        h.wait()
