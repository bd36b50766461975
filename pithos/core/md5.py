"""MD5 for ETags: the native twin when built (native/md5lanes.pyx), else hashlib's.

Under many concurrent uploads the native objects hash side by side in SIMD lanes (one
stream's MD5 cannot be split, but 16 streams cost about as much as two or three).  A lone
stream is hashed by the native portable code too (`single`): it orders each step's work so
that less of it waits for the previous step, 5% faster than OpenSSL's here.  Where the CPU has
no usable vectors (neither AVX2 nor AVX-512) there are no lanes (`MULTI_BUFFER` is False).
`PITHOS_PURE=1` forces hashlib, as for the other twins (pithos.core.native).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pithos.core.native import native


class Md5(Protocol):
    def update(self, data: Any, /) -> None: ...
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def _hashlib_md5() -> Md5:
    return hashlib.md5(usedforsecurity=False)


def _update_each(digests: Sequence[Md5], datas: Sequence[Any]) -> None:
    """update_many's twin: every buffer is checked first, so an error changes no digest."""
    views = [memoryview(data) for data in datas]
    for digest, view in zip(digests, views, strict=True):
        digest.update(view)


new: Callable[[], Md5]
# update_many(digests, datas): digests[i].update(datas[i]) for each i, side by side in lanes
update_many: Callable[[Sequence[Md5], Sequence[Any]], None]
_md5lanes: Any = native("pithos.core._md5lanes")  # None without the build or under PITHOS_PURE

# Whether `new` makes multi-buffer digests (which pay off only beside other streams).
MULTI_BUFFER = _md5lanes is not None and _md5lanes.vector_available() != "scalar"
new = _md5lanes.LaneMd5 if MULTI_BUFFER else _hashlib_md5
# single(): a digest for a stream hashed alone.
single: Callable[[], Md5] = _md5lanes.LaneMd5 if _md5lanes is not None else _hashlib_md5
update_many = _md5lanes.update_many if MULTI_BUFFER else _update_each
