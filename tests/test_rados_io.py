"""The RADOS plumbing's one errno table and its lazy import (pithos/blocker/rados_io.py), with
no cluster: the stores over it are tested against real Ceph in test_blockstore_rados.py and
test_archipelago_rados.py."""

from __future__ import annotations

import errno
import subprocess
import sys

import pytest

from pithos.blocker.rados_io import Blocklisted, rados_error, raise_failed
from pithos.core.errors import BackendError, NoSpace


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_no_room_is_no_space(code):
    assert isinstance(rados_error(code, "cannot store"), NoSpace)


@pytest.mark.parametrize("code", [errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR, errno.EBUSY,
                                  errno.ENOTCONN, errno.ECONNREFUSED])
def test_timeouts_and_lost_connections_are_transient(code):
    exc = rados_error(code, "cannot store")
    assert type(exc) is BackendError and exc.transient is True


def test_a_blocklisted_client_is_a_permanent_error_that_says_so():
    exc = rados_error(errno.ESHUTDOWN, "cannot write")
    assert isinstance(exc, Blocklisted) and exc.transient is False
    assert "blocklisted" in str(exc)


@pytest.mark.parametrize("code", [errno.EIO, errno.EINVAL, errno.EACCES, errno.ENOENT])
def test_anything_else_is_permanent(code):
    exc = rados_error(code, "cannot store")
    assert type(exc) is BackendError and exc.transient is False
    assert f"errno {code}" in str(exc)


def test_raise_failed_names_the_first_failure_and_skips_the_accepted_codes():
    raise_failed([0, -errno.ENOENT], "cannot read", ok=(0, -errno.ENOENT))
    with pytest.raises(NoSpace, match=r"cannot store \(2 of 3 failed\)"):
        raise_failed([0, -errno.ENOSPC, -errno.EIO], "cannot store")


def test_rados_is_imported_only_when_a_connection_is_made():
    code = (
        "import sys\n"
        "import pithos.blocker.rados_io as io, archipelago.rados\n"
        "assert 'rados' not in sys.modules\n"
        "sys.modules['rados'] = None  # as if python3-rados were not installed\n"
        "from pithos.core.errors import RADOS_MISSING, BackendError\n"
        "try:\n"
        "    io.RadosConnection('pool', '/nonexistent/ceph.conf')\n"
        "except BackendError as exc:\n"
        "    assert not exc.transient and str(exc) == RADOS_MISSING, exc\n"
        "else:\n"
        "    raise AssertionError('connected without rados')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
