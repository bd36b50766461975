"""The install a newcomer gets: exactly the locked versions, every module importable with only the
run dependencies, and one-line errors (naming the fix) where an optional part is missing.

The run-only virtualenv is the one `scripts/fresh-clone` made in a clean clone by running the
README's first command (scripts/test passes it as PITHOS_RUNONLY_VENV)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNONLY_VENV = os.environ.get("PITHOS_RUNONLY_VENV")
needs_runonly = pytest.mark.skipif(
    not RUNONLY_VENV, reason="PITHOS_RUNONLY_VENV is not set (scripts/test sets it)")


def locked(name: str) -> dict[str, str]:
    """{package: version} of requirements/NAME.txt."""
    text = (ROOT / "requirements" / f"{name}.txt").read_text()
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", text, re.MULTILINE)
    return {normal(n): v for n, v in pins}


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def frozen(python: str) -> dict[str, str]:
    """{package: version} installed in the virtualenv of `python`, less pip and the project."""
    out = subprocess.run([python, "-m", "pip", "freeze", "--all", "--exclude-editable",
                          "--disable-pip-version-check"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    found = {}
    for line in out.splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            found[normal(name)] = version.strip()
    found.pop("pip", None)
    return found


def test_the_test_lock_holds_every_run_pin_at_the_same_version():
    run, test = locked("run"), locked("test")
    assert {"gevent", "gunicorn", "falcon", "sqlalchemy", "blake3", "packaging", "cython",
            "setuptools", "wheel", "psycopg"} <= set(run)
    assert {name: test.get(name) for name in run} == run


def test_every_declared_dependency_is_locked():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    declared = [*project["project"]["dependencies"],
                *project["build-system"]["requires"],
                *project["project"]["optional-dependencies"]["postgres"]]
    run = locked("run")
    for spec in declared:
        name = normal(re.match(r"[A-Za-z0-9._-]+", spec).group(0))
        assert name in run, f"{spec} is declared but not in requirements/run.txt"


def test_the_venv_holds_exactly_the_test_lock():
    assert frozen(sys.executable) == locked("test")


@needs_runonly
def test_the_run_only_install_holds_exactly_the_run_lock():
    assert frozen(f"{RUNONLY_VENV}/bin/python") == locked("run")


@needs_runonly
def test_every_module_imports_with_the_run_dependencies_only():
    """Every module of the three packages imports in the run-only virtualenv (a module that
    needs an undeclared package, or a test-only one, fails here)."""
    script = """
import importlib, pkgutil, sys
names = []
for top in ("pithos", "archipelago", "compute"):
    package = importlib.import_module(top)
    names.append(top)
    names += [m.name for m in pkgutil.walk_packages(package.__path__, top + ".")]
for name in names:
    importlib.import_module(name)
print(len(names))
"""
    proc = subprocess.run([f"{RUNONLY_VENV}/bin/python", "-c", script], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 40
    # ...and none of the test-only packages is there to hide a missing declaration.
    has = subprocess.run([f"{RUNONLY_VENV}/bin/python", "-c", "import pytest"],
                         capture_output=True, timeout=60)
    assert has.returncode != 0


# -- one-line errors for missing optional parts ----------------------------------------------


def run_without(module: str, *argv: str, entry: str = "pithos.cli.main"):
    """`pithos ARGV` (or archipelago) in a subprocess where `module` cannot be imported, as
    in an install without it."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            f"from {entry} import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True,
                          timeout=120)


def assert_one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


@pytest.mark.parametrize("argv", [
    ["user", "list"],
    ["user", "add", "a:b", "--key", "k"],
    ["serve", "--listen", "127.0.0.1:1"],
])
def test_a_postgresql_catalog_without_psycopg_is_one_line_naming_the_fix(tmp_path, argv):
    proc = run_without("psycopg", *argv, "--data-dir", str(tmp_path),
                       "--catalog", "postgresql+psycopg://pithos@127.0.0.1/pithos")
    assert_one_line(proc, "psycopg", "scripts/setup", "pip install 'psycopg[binary]")


def test_a_rados_store_without_the_binding_is_one_line_naming_the_fix(tmp_path):
    fix = "apt-get install -y python3-rados && scripts/ceph link-venv"
    proc = run_without("rados", "store", "stats", "--data-dir", str(tmp_path),
                       "--blocks", "rados://pithos?conf=/etc/ceph/ceph.conf")
    assert_one_line(proc, fix)
    proc = run_without("rados", "volume", "list", "--data-dir", str(tmp_path),
                       "--blocks", "rados://pithos?conf=/etc/ceph/ceph.conf",
                       entry="archipelago.cli")
    assert_one_line(proc, fix)


def setup_copy(tmp_path: Path) -> Path:
    """scripts/setup alone in a tree of its own (no install stamp), with a `dpkg` on PATH that
    finds no package installed, as on a machine that lacks them."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup", tmp_path / "scripts" / "setup")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "dpkg").write_text("#!/bin/sh\nexit 1\n")
    (bin_dir / "dpkg").chmod(0o755)
    tmp_path.chmod(0o755)
    return bin_dir


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run setup as another user")
def test_setup_without_root_names_the_apt_command_for_missing_packages(tmp_path):
    # Where user nobody can reach it (pytest's own temporary directories are root's only).
    tmp_path = Path(tempfile.mkdtemp(prefix="pithos-setup-"))
    bin_dir = setup_copy(tmp_path)
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
         str(tmp_path / "scripts" / "setup"), "--test"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path)})
    try:
        assert_one_line(proc, "as root run: apt-get install -y", "qemu-utils",
                        "librust-blake3-dev")
        assert not (tmp_path / ".venv").exists()
    finally:
        shutil.rmtree(tmp_path)


def test_setup_without_venv_support_names_the_package(tmp_path):
    setup_copy(tmp_path)
    # Every Debian package found, so setup goes on to make the virtualenv.
    (tmp_path / "bin" / "dpkg").write_text("#!/bin/sh\nexit 0\n")
    proc = subprocess.run([str(tmp_path / "scripts" / "setup")], capture_output=True,
                          text=True, timeout=60,
                          env={**os.environ, "PYTHON": "false",
                               "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    assert_one_line(proc, "apt-get install -y python3-venv")
