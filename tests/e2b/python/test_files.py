"""files: write/read/list/exists/make_dir/rename/remove/watch through the real SDK."""

import pytest
from e2b import FileType, NotFoundException
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

from conftest import wait_for


def test_write_read_text_and_bytes(sandbox):
    info = sandbox.files.write("/tmp/files/a.txt", "hello")
    assert info.path == "/tmp/files/a.txt"
    assert sandbox.files.read("/tmp/files/a.txt") == "hello"
    blob = bytes(range(256)) * 64
    sandbox.files.write("/tmp/files/blob.bin", blob)
    assert bytes(sandbox.files.read("/tmp/files/blob.bin", format="bytes")) == blob
    # The file really is in the sandbox.
    assert sandbox.commands.run("wc -c < /tmp/files/blob.bin").stdout.strip() == str(len(blob))


def test_write_many_files(sandbox):
    from e2b.sandbox.filesystem.filesystem import WriteEntry

    infos = sandbox.files.write_files(
        [WriteEntry(path="/tmp/many/1.txt", data="one"), WriteEntry(path="/tmp/many/2.txt", data=b"two")]
    )
    assert sorted(i.path for i in infos) == ["/tmp/many/1.txt", "/tmp/many/2.txt"]
    assert sandbox.files.read("/tmp/many/2.txt") == "two"


def test_list_exists_make_dir_rename_remove(sandbox):
    assert sandbox.files.make_dir("/tmp/tree/sub") is True
    assert sandbox.files.make_dir("/tmp/tree/sub") is False
    sandbox.files.write("/tmp/tree/f.txt", "x")
    entries = {e.name: e for e in sandbox.files.list("/tmp/tree")}
    assert set(entries) == {"sub", "f.txt"}
    assert entries["sub"].type == FileType.DIR
    assert entries["f.txt"].type == FileType.FILE
    assert entries["f.txt"].size == 1
    assert sandbox.files.exists("/tmp/tree/f.txt")
    moved = sandbox.files.rename("/tmp/tree/f.txt", "/tmp/tree/sub/g.txt")
    assert moved.path == "/tmp/tree/sub/g.txt"
    assert not sandbox.files.exists("/tmp/tree/f.txt")
    assert sandbox.files.read("/tmp/tree/sub/g.txt") == "x"
    info = sandbox.files.get_info("/tmp/tree/sub/g.txt")
    assert info.size == 1 and info.type == FileType.FILE
    sandbox.files.remove("/tmp/tree")
    assert not sandbox.files.exists("/tmp/tree")


def test_missing_file_raises_not_found(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.files.read("/tmp/does/not/exist")
    with pytest.raises(NotFoundException):
        sandbox.files.list("/tmp/does/not/exist")


def test_watch_dir_polling(sandbox):
    sandbox.files.make_dir("/tmp/watched")
    handle = sandbox.files.watch_dir("/tmp/watched")
    try:
        sandbox.files.write("/tmp/watched/new.txt", "data")
        sandbox.files.remove("/tmp/watched/new.txt")
        seen = []

        def got_remove():
            seen.extend(handle.get_new_events())
            return any(e.type == FilesystemEventType.REMOVE for e in seen)

        wait_for("a remove event", got_remove)
        assert any(e.name == "new.txt" and e.type in (FilesystemEventType.CREATE, FilesystemEventType.WRITE) for e in seen)
    finally:
        handle.stop()


def test_gzip_upload_and_download(sandbox):
    text = "compress me " * 5000
    sandbox.files.write("/tmp/files/gz.txt", text, gzip=True)
    assert sandbox.commands.run("wc -c < /tmp/files/gz.txt").stdout.strip() == str(len(text))
    assert sandbox.files.read("/tmp/files/gz.txt", gzip=True) == text


def test_octet_stream_upload_without_gzip(sandbox):
    sandbox.files.write("/tmp/files/raw.txt", "raw body", use_octet_stream=True)
    assert sandbox.files.read("/tmp/files/raw.txt") == "raw body"
