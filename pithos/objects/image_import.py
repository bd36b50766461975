"""Importing an image's upload: qcow2 is converted to raw once, with qemu-img, before it is
stored (a disk is then a thin clone of a plain map, whatever format it came in).

The upload is spooled to a temporary directory (in the data directory), bounded by the
largest object; qemu-img runs as a subprocess with a timeout (under a gevent worker, whose
subprocess module is patched, the wait is cooperative).  A qcow2 that names a backing file or
an external data file is refused before conversion: qemu-img would read whatever path the
uploader wrote into it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import BinaryIO

from pithos.core.errors import IncompleteBody, InvalidArgument, TooLarge

QCOW2_MAGIC = b"QFI\xfb"
# How long qemu-img may take to describe an upload, and to convert one.
INFO_TIMEOUT_S = 60.0
CONVERT_TIMEOUT_S = 1800.0
SPOOL_PIECE = 1 << 20


class Prefixed:
    """A stream with some bytes already read from it put back in front."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        self._head = head
        self._rest = rest

    def read(self, n: int = -1) -> bytes:
        if self._head:
            if n < 0:
                out, self._head = self._head + self._rest.read(), b""
                return out
            out, self._head = self._head[:n], self._head[n:]
            return out
        return self._rest.read(n)


def read_head(body: BinaryIO, n: int) -> bytes:
    """Up to `n` first bytes of `body` (fewer only at its end)."""
    head = b""
    while len(head) < n:
        piece = body.read(n - len(head))
        if not piece:
            break
        head += piece
    return head


@contextmanager
def converted_to_raw(body: BinaryIO, length: int | None, max_size: int,
                     spool_dir: str | None, qemu_img: str = "qemu-img",
                     convert_timeout_s: float = CONVERT_TIMEOUT_S
                     ) -> Iterator[tuple[BinaryIO, int]]:
    """The raw content of the qcow2 upload `body`, as an open file and its size; removed on
    exit.  InvalidArgument (with qemu-img's reason) for what is not a usable qcow2, TooLarge
    for an upload or a disk over `max_size`."""
    if length is not None and length > max_size:
        raise TooLarge(f"image larger than {max_size} bytes")
    if spool_dir is not None:
        os.makedirs(spool_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="image-", dir=spool_dir)
    try:
        src, dst = os.path.join(work, "upload.qcow2"), os.path.join(work, "disk.raw")
        _spool(body, length, max_size, src)
        info = _info(qemu_img, src)
        virtual = int(info.get("virtual-size") or 0)
        if virtual > max_size:
            raise TooLarge(f"the disk is {virtual} bytes, more than the largest image "
                           f"({max_size})")
        _run([qemu_img, "convert", "-q", "-f", "qcow2", "-O", "raw", src, dst],
             convert_timeout_s, "qemu-img could not convert the qcow2 image")
        os.unlink(src)  # (the space goes back before the raw disk is read)
        with open(dst, "rb") as f:
            yield f, os.fstat(f.fileno()).st_size
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _spool(body: BinaryIO, length: int | None, max_size: int, path: str) -> None:
    count = 0
    with open(path, "wb") as out:
        while True:
            want = SPOOL_PIECE if length is None else min(SPOOL_PIECE, length - count)
            if want <= 0:
                break
            piece = body.read(want)
            if not piece:
                if length is not None:
                    raise IncompleteBody(f"got {count} of {length} bytes")
                break
            count += len(piece)
            if count > max_size:
                raise TooLarge(f"image larger than {max_size} bytes")
            out.write(piece)


def _info(qemu_img: str, path: str) -> dict[str, object]:
    out = _run([qemu_img, "info", "-f", "qcow2", "--output=json", path], INFO_TIMEOUT_S,
               "not a qcow2 image")
    try:
        info = json.loads(out)
    except ValueError:
        raise InvalidArgument("not a qcow2 image: qemu-img could not describe it") from None
    if not isinstance(info, dict):
        raise InvalidArgument("not a qcow2 image")
    if info.get("backing-filename") or info.get("full-backing-filename"):
        raise InvalidArgument("a qcow2 image with a backing file is refused: upload the "
                              "whole disk (qemu-img convert it first)")
    specific = info.get("format-specific")
    data = specific.get("data") if isinstance(specific, dict) else None
    if isinstance(data, dict) and data.get("data-file"):
        raise InvalidArgument("a qcow2 image with an external data file is refused")
    return info


def _run(argv: list[str], timeout_s: float, what: str) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise InvalidArgument(f"{what}: qemu-img took longer than {timeout_s:.0f} s") from None
    except FileNotFoundError:
        raise InvalidArgument("this server cannot import qcow2 images (no qemu-img); upload "
                              "a raw image") from None
    if done.returncode != 0:
        reason = done.stderr.decode(errors="replace").strip().splitlines()
        # qemu-img names the spool file: only its message after the path is the reason.
        last = reason[-1].rsplit("': ", 1)[-1] if reason else f"exit status {done.returncode}"
        raise InvalidArgument(f"{what}: {last[:300]}")
    return done.stdout.decode(errors="replace")
