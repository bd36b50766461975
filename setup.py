"""Build script: the package metadata lives in pyproject.toml; this file adds the optional
Cython extensions from native/.  Every extension has a pure-Python twin, so a build without
Cython or a compiler still gives a working (slower) package."""

import os

from setuptools import setup

NATIVE = {
    # extension module            Cython source
    "pithos.mapper._mapcodec": "native/mapcodec.pyx",
    "archipelago._overlay": "native/overlay.pyx",
    "pithos.core._md5lanes": "native/md5lanes.pyx",
}


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
    return cythonize(exts, language_level=3, compiler_directives={"boundscheck": False,
                                                                  "wraparound": False})


setup(ext_modules=native_extensions())
