"""The package as people get it (15.7, 15.8): the sdist carries the units, scripts, docs, tests
and licence; the wheel installed in a fresh venv gives a `cagefs` that mounts; `cagefs.age`
imports without FUSE.

Building needs setuptools >= 77 (pyproject's build-system): pip takes it from its cache or the
index, as for any `pip install .`. The fresh venv borrows the dependencies (cryptography,
pyfuse3, trio...) from the running one, so nothing else is fetched.
"""

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest
from test_mount_cli import PASSPHRASE

from cagefs.store import init_store

ROOT = Path(__file__).resolve().parent.parent
# Without the PYTHONPATH the suite may run under: pip and the fresh venv would see this tree.
CLEAN_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
pytestmark = pytest.mark.slow


def pip(*args: object) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=CLEAN_ENV,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist built from this tree, and a wheel built from that sdist (as pip would)."""
    out = tmp_path_factory.mktemp("dist")
    builder = tmp_path_factory.mktemp("builder")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", builder], check=True)
    pip("--python", builder / "bin/python", "install", "-q", "setuptools>=77")
    code = f"from setuptools import build_meta as b; print(b.build_sdist({str(out)!r}))"
    made = subprocess.run(
        [builder / "bin/python", "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=CLEAN_ENV,
    )
    assert made.returncode == 0, made.stderr[-3000:]
    [sdist] = out.glob("cagefs-*.tar.gz")
    pip("wheel", "-q", "--no-deps", "-w", out, sdist)
    return out


def test_sdist_has_the_units_scripts_docs_tests_and_licence(dist: Path) -> None:
    [sdist] = dist.glob("cagefs-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for wanted in (
        "LICENSE",
        "README.md",
        "systemd/cagefs@.service",
        "scripts/install.sh",
        "scripts/patches/pyfuse3-borrowed-write-buffers.patch",
        "scripts/patches/pyfuse3-inline-session-loop.patch",
        "docs/ARCHITECTURE.md",
        "tests/test_vectors.py",
        "tests/age-vectors/SOURCE.txt",
        "cagefs/py.typed",
    ):
        assert wanted in names, f"{wanted} is not in the sdist"
    assert not [name for name in names if "__pycache__" in name]


def test_wheel_in_a_fresh_venv_mounts(dist: Path, tmp_path: Path) -> None:
    [wheel] = dist.glob("cagefs-*.whl")
    with zipfile.ZipFile(wheel) as zipped:
        names = zipped.namelist()
    assert "cagefs/py.typed" in names and any(n.endswith("licenses/LICENSE") for n in names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    pip("--python", venv / "bin/python", "install", "-q", "--no-deps", wheel)
    # The dependencies, from the running venv, after the fresh one's own site-packages.
    site = Path(
        subprocess.run(
            [venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            capture_output=True,
            text=True,
            check=True,
            env=CLEAN_ENV,
        ).stdout.strip()
    )
    (site / "zz-deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    cagefs = venv / "bin/cagefs"
    version = subprocess.run(
        [cagefs, "--version"], capture_output=True, text=True, check=True, env=CLEAN_ENV
    )
    assert version.stdout.startswith("cagefs ")
    where = subprocess.run(
        [venv / "bin/python", "-c", "import cagefs; print(cagefs.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env=CLEAN_ENV,
    )
    assert where.stdout.startswith(str(site)), "the fresh venv ran another cagefs"

    store, mnt, passfile = tmp_path / "store", tmp_path / "mnt", tmp_path / "pass"
    init_store(store, passphrase=PASSPHRASE.encode(), log_n=10)
    mnt.mkdir()
    passfile.write_text(PASSPHRASE + "\n")
    mounted = subprocess.run(
        [cagefs, "mount", store, mnt, "--passfile", passfile, "--log", tmp_path / "log"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
        env=CLEAN_ENV,
    )
    try:
        assert mounted.returncode == 0, mounted.stderr
        (mnt / "hello.txt").write_text("from a fresh install\n")
        subprocess.run([cagefs, "umount", mnt], check=True, timeout=120, env=CLEAN_ENV)
    finally:
        subprocess.run(["fusermount3", "-u", mnt], capture_output=True, check=False)
    assert (store / "hello.txt.age").exists()


def test_the_age_engine_imports_without_fuse_or_trio() -> None:
    """15.8: pyfuse3 and trio are the filesystem's; the engine and the store need neither."""
    code = (
        "import sys\n"
        "sys.modules['pyfuse3'] = sys.modules['trio'] = None  # importing them now fails\n"
        "import cagefs.age, cagefs.store, cagefs.cli.main\n"
        "from cagefs.age import encrypt, decrypt, parse_recipient\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
