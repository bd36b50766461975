"""The overlay hot path: the native twin when built, else the pure one.

The choice is made once, at import, by pithos.core.native (where `PITHOS_PURE=1` forces the
pure twin), as for pithos.mapper.codec.
"""

from __future__ import annotations

from types import ModuleType

from archipelago import _overlay_py as pure
from pithos.core.native import load

impl: ModuleType
impl, IS_NATIVE = load("archipelago._overlay", pure)

parse_request = impl.parse_request
simple_reply = impl.simple_reply
runs = impl.runs
count = impl.count
mark = impl.mark
recv_spin = impl.recv_spin
