"""NBD protocol constants (values from the NBD protocol document, doc/proto.md of the reference
implementation) and the one table that turns our errors into NBD errors."""

from __future__ import annotations

import errno

from archipelago.heads import LeaseLost
from pithos.core.errors import (
    Conflict,
    Forbidden,
    IntegrityError,
    InvalidArgument,
    NoSpace,
    NotFound,
)

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
IHAVEOPT_INT = 0x49484156454F5054
OPT_REPLY_MAGIC = 0x3E889045565A9

# Handshake flags (server) and client flags.
FLAG_FIXED_NEWSTYLE = 1 << 0
FLAG_NO_ZEROES = 1 << 1
FLAG_C_FIXED_NEWSTYLE = 1 << 0
FLAG_C_NO_ZEROES = 1 << 1

# Transmission flags.
FLAG_HAS_FLAGS = 1 << 0
FLAG_READ_ONLY = 1 << 1
FLAG_SEND_FLUSH = 1 << 2
FLAG_SEND_FUA = 1 << 3
FLAG_ROTATIONAL = 1 << 4
FLAG_SEND_TRIM = 1 << 5
FLAG_SEND_WRITE_ZEROES = 1 << 6
FLAG_SEND_DF = 1 << 7
FLAG_CAN_MULTI_CONN = 1 << 8

# Options.
OPT_EXPORT_NAME = 1
OPT_ABORT = 2
OPT_LIST = 3
OPT_STARTTLS = 5
OPT_INFO = 6
OPT_GO = 7
OPT_STRUCTURED_REPLY = 8

# Option replies.
REP_ACK = 1
REP_SERVER = 2
REP_INFO = 3
REP_ERR_UNSUP = (1 << 31) + 1
REP_ERR_POLICY = (1 << 31) + 2
REP_ERR_INVALID = (1 << 31) + 3
REP_ERR_UNKNOWN = (1 << 31) + 6
REP_ERR_SHUTDOWN = (1 << 31) + 7
REP_ERR_TOO_BIG = (1 << 31) + 9

# Information types (NBD_REP_INFO).
INFO_EXPORT = 0
INFO_NAME = 1
INFO_DESCRIPTION = 2
INFO_BLOCK_SIZE = 3

# Commands and command flags.
CMD_READ = 0
CMD_WRITE = 1
CMD_DISC = 2
CMD_FLUSH = 3
CMD_TRIM = 4
CMD_CACHE = 5
CMD_WRITE_ZEROES = 6
CMD_BLOCK_STATUS = 7
CMD_FLAG_FUA = 1 << 0
CMD_FLAG_NO_HOLE = 1 << 1
CMD_FLAG_DF = 1 << 2
CMD_FLAG_FAST_ZERO = 1 << 4

# Error values.
EPERM = 1
EIO = 5
ENOMEM = 12
EINVAL = 22
ENOSPC = 28
EOVERFLOW = 75
ESHUTDOWN = 108
assert (EPERM, EIO, EINVAL, ENOSPC) == (errno.EPERM, errno.EIO, errno.EINVAL, errno.ENOSPC)

# Size constraints we advertise: any byte alignment works (partial sectors are read-modify-
# written), 4 KiB is what avoids that, and one request moves at most 32 MiB.
MIN_BLOCK = 1
PREFERRED_BLOCK = 4096
MAX_BLOCK = 32 * 1024 * 1024


def nbd_errno(exc: BaseException) -> int:
    """The NBD error for one of our errors: the one table (see docs/volumes.md)."""
    if isinstance(exc, InvalidArgument):
        return EINVAL
    if isinstance(exc, NoSpace):
        return ENOSPC
    if isinstance(exc, Forbidden | LeaseLost):
        return EPERM
    if isinstance(exc, IntegrityError | NotFound | Conflict):
        return EIO
    return EIO
