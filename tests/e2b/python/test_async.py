"""The async SDK variant: create, commands, files, watch (server stream), kill."""

import asyncio

import pytest
from e2b import AsyncSandbox, CommandExitException
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType


@pytest.mark.asyncio
async def test_async_create_run_files_kill():
    sb = await AsyncSandbox.create(timeout=120, envs={"ASYNC_VAR": "1"}, metadata={"suite": "async"})
    try:
        r = await sb.commands.run("echo $ASYNC_VAR")
        assert r.stdout == "1\n"
        with pytest.raises(CommandExitException):
            await sb.commands.run("exit 4")
        await sb.files.write("/tmp/async.txt", "async data")
        assert await sb.files.read("/tmp/async.txt") == "async data"
        assert [e.name for e in await sb.files.list("/tmp") if e.name == "async.txt"] == ["async.txt"]
        assert (await sb.get_info()).metadata == {"suite": "async"}

        if hasattr(sb.commands, "close_stdin"):
            h = await sb.commands.run("cat", background=True, stdin=True)
            await sb.commands.send_stdin(h.pid, "piped\n")
            await sb.commands.close_stdin(h.pid)
        else:  # e2b 2.26: no close_stdin; read a known length
            h = await sb.commands.run("head -c 6", background=True, stdin=True)
            await sb.commands.send_stdin(h.pid, "piped\n")
        assert (await h.wait()).stdout == "piped\n"
    finally:
        await sb.kill()
    assert not await sb.is_running()


@pytest.mark.asyncio
async def test_async_watch_dir_stream():
    sb = await AsyncSandbox.create(timeout=120)
    try:
        await sb.files.make_dir("/tmp/w")
        events = []
        got = asyncio.Event()

        def on_event(e):
            events.append(e)
            if e.type == FilesystemEventType.WRITE or e.type == FilesystemEventType.CREATE:
                got.set()

        handle = await sb.files.watch_dir("/tmp/w", on_event=on_event)
        await sb.files.write("/tmp/w/x.txt", "1")
        await asyncio.wait_for(got.wait(), 20)
        await handle.stop()
        assert any(e.name == "x.txt" for e in events)
    finally:
        await sb.kill()


@pytest.mark.asyncio
async def test_async_code_interpreter():
    from e2b_code_interpreter import AsyncSandbox as AsyncCodeSandbox

    sb = await AsyncCodeSandbox.create(timeout=120)
    try:
        assert (await sb.run_code("n = 10")).error is None
        out = []
        ex = await sb.run_code("print('async'); n + 1", on_stdout=lambda m: out.append(m.line))
        assert ex.text == "11"
        assert "".join(out) == "async\n"
        ctx = await sb.create_code_context(language="python")
        assert (await sb.run_code("n", context=ctx)).error.name == "NameError"
    finally:
        await sb.kill()
