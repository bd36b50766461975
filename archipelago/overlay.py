"""The overlay hot path: the native twin when built, else the pure one.

`PITHOS_PURE=1` forces the pure twin, as for pithos.mapper.codec: the choice is made at import
time, so this is the one place below the entry points that reads the environment.
"""

from __future__ import annotations

import os
from types import ModuleType

from archipelago import _overlay_py as pure

native: ModuleType | None
try:
    from archipelago import _overlay as native  # type: ignore[attr-defined,no-redef,unused-ignore]
except ImportError:
    native = None

impl: ModuleType = pure if native is None or os.environ.get("PITHOS_PURE") == "1" else native

parse_request = impl.parse_request
simple_reply = impl.simple_reply
runs = impl.runs
count = impl.count
mark = impl.mark
recv_spin = impl.recv_spin
IS_NATIVE = impl is not pure
