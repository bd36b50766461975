"""Build script: the package metadata lives in pyproject.toml; this file adds the optional
Cython extensions from native/.  Every extension has a pure-Python twin, so a build without
Cython or a compiler still gives a working (slower) package.

pithos.core._treehash and pithos.core._cdchash also need the BLAKE3 team's C sources, which
Debian ships in librust-blake3-dev (scripts/setup installs it; PITHOS_BLAKE3_C names another
copy).  Without them, blocks are stored with no tree outboard and read back verified whole,
and the sync client cuts with pithos.core._cdc and names the chunks with the blake3 package."""

import glob
import os
import platform

from setuptools import setup
from setuptools.command.build_ext import build_ext

NATIVE = {
    # extension module            Cython source
    "pithos.mapper._mapcodec": "native/mapcodec.pyx",
    "archipelago._overlay": "native/overlay.pyx",
    "pithos.core._md5lanes": "native/md5lanes.pyx",
    "pithos.core._cdc": "native/cdc.pyx",
    "pithos.blocker._gather": "native/gather.pyx",
}


def blake3_sources():
    """The BLAKE3 C directory (for the include path: native/b3subtree.c and b3_*.S include
    its files), our C and assembly sources to compile beside a module's .pyx, and the
    macros; or None.  On x86_64 the SIMD
    code is the upstream assembly, which needs no per-file compiler flags; elsewhere the
    portable code only."""
    found = [os.environ["PITHOS_BLAKE3_C"]] if os.environ.get("PITHOS_BLAKE3_C") else \
        sorted(glob.glob("/usr/share/cargo/registry/blake3-1.*/c"), reverse=True)
    for directory in found:
        if not os.path.isfile(os.path.join(directory, "blake3.c")):
            continue
        sources = ["native/b3subtree.c"]
        macros = []
        if platform.machine() in ("x86_64", "AMD64"):
            sources += [f"native/b3_{isa}.S" for isa in ("sse2", "sse41", "avx2", "avx512")]
        else:
            macros = [(f"BLAKE3_NO_{isa}", "1") for isa in ("SSE2", "SSE41", "AVX2", "AVX512")]
        return directory, sources, macros
    return None


class BuildExt(build_ext):
    """build_ext that also compiles assembly (.S, through the C compiler's preprocessor)."""

    def build_extensions(self):
        if ".S" not in self.compiler.src_extensions:
            self.compiler.src_extensions.append(".S")
        super().build_extensions()


def native_extensions():
    if os.environ.get("PITHOS_PURE") == "1":
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    from setuptools import Extension

    exts = [Extension(name, [src], include_dirs=["native"], extra_compile_args=["-O3"])
            for name, src in NATIVE.items()]
    blake3 = blake3_sources()
    if blake3 is not None:
        directory, sources, macros = blake3
        for name, pyx in (("pithos.core._treehash", "native/treehash.pyx"),
                          ("pithos.core._cdchash", "native/cdchash.pyx")):
            exts.append(Extension(name, [pyx, *sources],
                                  include_dirs=["native", directory], define_macros=macros,
                                  extra_compile_args=["-O3"]))
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False,
                                                                  "wraparound": False})


setup(ext_modules=native_extensions(), cmdclass={"build_ext": BuildExt})
