"""Native or pure: the one loader of the accelerated modules (native/, built by setup.py).

Every accelerated function has a pure-Python twin that the same tests run against (the page
codec, the NBD parser and bitmap), or a plain fallback (hashlib's MD5 for the multi-buffer
one; whole-block reads without the BLAKE3 subtree hasher).  A module with a twin asks here
which one to use, once, at import.

`PITHOS_PURE=1` in the environment makes every such module use its pure twin or fallback, as
dulwich's and falcon's switches do: a process-wide switch for testing the twins (scripts/test
reruns suites under it), which must act before any module picks its twin.  It is the one
documented exception to "only the entry points read the environment" (docs/design.md), and it
is read here only: nothing else reads `PITHOS_PURE` (setup.py, a build script, has its own).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import NamedTuple

# Whether the pure twins are forced for this process (read once, before any twin is chosen).
PURE = os.environ.get("PITHOS_PURE") == "1"


class Twin(NamedTuple):
    """The module chosen for an accelerated one, and whether it is the native build."""
    module: ModuleType
    is_native: bool


def built(name: str) -> ModuleType | None:
    """The extension `name` (e.g. "pithos.core._treehash") whether or not `PITHOS_PURE=1`, or
    None when it is not built (or not importable here): for a module whose functions need it
    beside a flag saying whether to use them (pithos.core.treehash)."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def native(name: str) -> ModuleType | None:
    """The extension `name` (e.g. "pithos.core._md5lanes"), or None when it is not built or
    `PITHOS_PURE=1`."""
    return None if PURE else built(name)


def load(native_name: str, pure: ModuleType) -> Twin:
    """The extension `native_name` if `native` gives it, else its twin `pure` (imported by
    the caller, so that the layering checks and the type checker see it)."""
    module = native(native_name)
    return Twin(pure, False) if module is None else Twin(module, True)
