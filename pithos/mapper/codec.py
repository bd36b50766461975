"""Map page codec and range resolution: the native twin when built, else the pure one.

The choice is made once, at import, by pithos.core.native (where `PITHOS_PURE=1` forces the
pure-Python twin).
"""

from __future__ import annotations

from types import ModuleType

from pithos.core.native import load
from pithos.mapper import _mapcodec_py as pure

impl: ModuleType
impl, IS_NATIVE = load("pithos.mapper._mapcodec", pure)

encode_leaf = impl.encode_leaf
encode_node = impl.encode_node
decode_page = impl.decode_page
locate = impl.locate
is_zero = impl.is_zero


def page_size(fanout: int) -> int:
    """The largest page a map of this fanout writes (an interior one)."""
    return pure.HEADER.size + fanout * pure.NODE_ENTRY.size
