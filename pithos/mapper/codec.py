"""Map page codec and range resolution: the native twin when built, else the pure one.

`PITHOS_PURE=1` in the environment forces the pure-Python twin (like dulwich and falcon's
switches); it is the one environment variable read below the entry points, because the choice
must be made at import time.
"""

from __future__ import annotations

import os
from types import ModuleType

from pithos.mapper import _mapcodec_py as pure

native: ModuleType | None
try:
    from pithos.mapper import _mapcodec as native  # type: ignore[attr-defined,no-redef,unused-ignore]
except ImportError:
    native = None

impl: ModuleType = pure if native is None or os.environ.get("PITHOS_PURE") == "1" else native

encode_leaf = impl.encode_leaf
encode_node = impl.encode_node
decode_page = impl.decode_page
locate = impl.locate
is_zero = impl.is_zero
IS_NATIVE = impl is not pure


def page_size(fanout: int) -> int:
    """The largest page a map of this fanout writes (an interior one)."""
    return pure.HEADER.size + fanout * pure.NODE_ENTRY.size
