"""Two devices (two folders, two state databases) kept in step through one live `pithos serve`:
create, edit, rename, move, delete, conflicting edits, edit-vs-delete; after each step both
folders and the container agree byte for byte."""

from __future__ import annotations

import os
import random

import pytest
from sync_helpers import Device, assert_agree, container_files


@pytest.fixture
def devices(pithos_server, tmp_path, request):
    container = f"sync-{request.node.name[:40]}".replace("[", "-").replace("]", "")
    a = Device(pithos_server, tmp_path / "a", container)
    b = Device(pithos_server, tmp_path / "b", container)
    return a, b


def both(server, a, b):
    a.sync()
    b.sync()
    a.sync()
    return assert_agree(server, a, b, container=a.container)


def test_create_edit_delete(pithos_server, devices):
    a, b = devices
    a.write("hello.txt", b"hello\n")
    a.write("docs/deep/note.md", b"# note\n" * 100)
    a.write("empty", b"")
    a.write("ünïcode dir/a name with spaces & 100%.txt", b"u")
    remote = both(pithos_server, a, b)
    assert remote == {"hello.txt": b"hello\n", "docs/deep/note.md": b"# note\n" * 100,
                      "empty": b"", "ünïcode dir/a name with spaces & 100%.txt": b"u"}
    b.write("hello.txt", b"hello from b\n")
    remote = both(pithos_server, a, b)
    assert a.read("hello.txt") == b"hello from b\n"
    os.unlink(a.path("docs/deep/note.md"))
    remote = both(pithos_server, a, b)
    assert "docs/deep/note.md" not in remote
    assert not os.path.exists(b.path("docs")), "the emptied directories go too"


def test_rename_and_move_move_no_data(pithos_server, devices):
    a, b = devices
    data = random.Random(1).randbytes(3 << 20)
    a.write("photo.jpg", data)
    both(pithos_server, a, b)
    os.rename(a.path("photo.jpg"), a.path("renamed.jpg"))
    os.makedirs(a.path("album/2026"))
    a.write("other.bin", random.Random(2).randbytes(1000))
    s = a.sync()
    assert s.moved == 1 and s.sent_bytes == 1000, s
    os.rename(a.path("renamed.jpg"), a.path("album/2026/photo.jpg"))
    s = a.sync()
    assert s.moved == 1 and s.sent_bytes == 0
    s = b.sync()
    assert s.moved == 1 and s.fetched_bytes == 1000, s
    remote = assert_agree(pithos_server, a, b, container=a.container)
    assert remote["album/2026/photo.jpg"] == data


def test_conflicting_edits_keep_both(pithos_server, devices):
    a, b = devices
    a.write("doc.txt", b"v1\n")
    both(pithos_server, a, b)
    a.write("doc.txt", b"v2 from a\n")
    b.write("doc.txt", b"v2 from b, longer\n")
    a.sync()
    s = b.sync()
    assert s.conflicts == 1
    remote = both(pithos_server, a, b)
    assert remote["doc.txt"] == b"v2 from a\n"
    copies = [n for n in remote if n.startswith("doc (conflict from ")]
    assert len(copies) == 1 and copies[0].endswith(").txt")
    assert remote[copies[0]] == b"v2 from b, longer\n"


def test_both_create_the_same_name(pithos_server, devices):
    a, b = devices
    a.write("new.txt", b"a's\n")
    b.write("new.txt", b"b's\n")
    a.sync()
    b.sync()
    remote = both(pithos_server, a, b)
    assert len(remote) == 2 and sorted(remote.values()) == [b"a's\n", b"b's\n"]


def test_edit_vs_delete_keeps_the_edit(pithos_server, devices):
    a, b = devices
    a.write("x.txt", b"x1")
    a.write("y.txt", b"y1")
    both(pithos_server, a, b)
    # x: edited on a, deleted on b.  y: deleted on a, edited on b.
    a.write("x.txt", b"x2 edited")
    os.unlink(b.path("x.txt"))
    os.unlink(a.path("y.txt"))
    b.write("y.txt", b"y2 edited")
    a.sync()
    b.sync()
    remote = both(pithos_server, a, b)
    assert remote == {"x.txt": b"x2 edited", "y.txt": b"y2 edited"}


def test_same_content_on_both_sides_is_no_conflict(pithos_server, devices):
    a, b = devices
    a.write("same", b"identical")
    b.write("same", b"identical")
    a.sync()
    s = b.sync()
    assert s.conflicts == 0 and s.downloaded == 0 and s.uploaded == 0
    assert container_files(pithos_server, a.container) == {"same": b"identical"}


def test_a_path_newly_ignored_is_left_alone_on_both_sides(pithos_server, devices):
    """A rule added after a file was synced: the scan no longer lists the file, which is no
    deletion (it deleted it from the server, then from every other device)."""
    a, b = devices
    a.write("notes.log", b"log")
    a.write("build/out.bin", b"bin")
    a.write("keep.txt", b"keep")
    both(pithos_server, a, b)
    a.write(".pithosignore", b"*.log\nbuild/\n")
    a.sync()
    b.sync()
    assert container_files(pithos_server, a.container) == {
        "notes.log": b"log", "build/out.bin": b"bin", "keep.txt": b"keep",
        ".pithosignore": b"*.log\nbuild/\n"}
    assert a.read("notes.log") == b"log" and a.read("build/out.bin") == b"bin"
    assert b.read("notes.log") == b"log" and b.read("build/out.bin") == b"bin"
    # Edits of an ignored path stay where they are made.
    a.write("notes.log", b"log 2")
    a.sync()
    assert container_files(pithos_server, a.container)["notes.log"] == b"log"


def test_a_synced_path_a_symbolic_link_now_stands_in_is_no_deletion(pithos_server, devices):
    """A file, and a directory, moved elsewhere and linked back: their objects stay on the
    server and on the other device (they were deleted everywhere), and the run says why it
    does not agree."""
    a, b = devices
    a.write("g.txt", b"g")
    a.write("real/data.txt", b"data")
    both(pithos_server, a, b)
    away = a.folder + "-elsewhere"
    os.makedirs(away)
    for name in ("g.txt", "real"):
        os.rename(a.path(name), os.path.join(away, name))
        os.symlink(os.path.join(away, name), a.path(name))
    stats = a.sync_unchecked()
    assert not stats.agreed
    b.sync()
    assert container_files(pithos_server, a.container) == {"g.txt": b"g",
                                                           "real/data.txt": b"data"}
    assert b.read("g.txt") == b"g" and b.read("real/data.txt") == b"data"
    # A download never writes through the link: the other device's edit stays on the server.
    b.write("g.txt", b"g from b")
    b.sync()
    a.sync_unchecked()
    with open(os.path.join(away, "g.txt"), "rb") as f:
        assert f.read() == b"g"


def test_a_download_has_the_modes_a_user_expects(pithos_server, devices):
    """A new file gets the umask's mode (every download was 0600), and a file replaced by
    the other device's edit keeps its own (an executable stayed one no more)."""
    a, b = devices
    a.write("run.sh", b"#!/bin/sh\n")
    a.write("new.txt", b"new")
    both(pithos_server, a, b)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(b.path("new.txt")).st_mode & 0o777 == 0o666 & ~umask
    os.chmod(b.path("run.sh"), 0o755)
    a.write("run.sh", b"#!/bin/sh\necho edited\n")
    a.sync()
    b.sync()
    assert b.read("run.sh") == b"#!/bin/sh\necho edited\n"
    assert os.stat(b.path("run.sh")).st_mode & 0o777 == 0o755


def test_objects_no_file_can_be_are_said_and_the_run_does_not_agree(pithos_server, devices):
    """Another writer's objects named '../x', 'a//b', 'dir/': no file of the folder can be
    them, and nothing escapes the folder; the run says so, one line each, and does not call
    the two sides in agreement (it did, silently)."""
    import requests

    a, _ = devices
    a.write("fine.txt", b"fine")
    a.sync()
    r = requests.get(pithos_server.auth_url, timeout=30,
                     headers={"X-Auth-User": "test:tester", "X-Auth-Key": "testing"})
    url, h = r.headers["X-Storage-Url"], {"X-Auth-Token": r.headers["X-Auth-Token"]}
    for name in ("%2E%2E/esc.txt", "dbl//slash.txt", "trail/"):  # (unnormalized)
        assert requests.put(f"{url}/{a.container}/{name}", data=b"x", headers=h,
                            timeout=30).status_code == 201
    stats = a.sync_unchecked()
    assert not stats.agreed
    for name in ("../esc.txt", "dbl//slash.txt", "trail/"):
        assert [ln for ln in a.lines if repr(name) in ln], (name, a.lines)
    assert sorted(os.listdir(a.folder)) == [".pithos-sync", "fine.txt"]
    assert not os.path.exists(os.path.join(os.path.dirname(a.folder), "esc.txt"))


def test_an_edit_that_keeps_the_size_and_puts_the_mtime_back_is_seen(pithos_server, devices):
    """cp -p, rsync -t, tar: the same size, the mtime put back, the same inode.  The files
    cache took it for the file it had hashed, so the edit was never sent, and a later edit
    from the other device overwrote it with no conflict copy."""
    a, b = devices
    a.write("doc.txt", b"version one")
    both(pithos_server, a, b)
    st = os.stat(a.path("doc.txt"))
    with open(a.path("doc.txt"), "r+b") as f:  # (in place: the same inode)
        f.write(b"VERSION ONE")
    os.utime(a.path("doc.txt"), ns=(st.st_atime_ns, st.st_mtime_ns))
    after = os.stat(a.path("doc.txt"))
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        st.st_size, st.st_mtime_ns, st.st_ino)
    remote = both(pithos_server, a, b)
    assert remote["doc.txt"] == b"VERSION ONE" and b.read("doc.txt") == b"VERSION ONE"
