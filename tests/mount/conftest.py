"""Fixtures that mount real cagefs instances: one per strategy, torn down whatever happens."""

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import STRATEGIES, Daemon, cagefs


@pytest.fixture(scope="session")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("identity") / "key.txt"
    proc = cagefs("keygen", "-o", path)
    assert proc.returncode == 0, proc.stderr
    return path


@pytest.fixture
def store(tmp_path: Path, identity: Path) -> Iterator[Path]:
    """An initialised, empty store; removed after the test so big files do not pile up."""
    path = tmp_path / "store"
    path.mkdir()
    proc = cagefs("init", path, "--identity", identity)
    assert proc.returncode == 0, proc.stderr
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Path]:
    """The twin: a plain directory where the same operations run as on the mount."""
    path = tmp_path / "plain"
    path.mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def daemons(tmp_path: Path, store: Path, identity: Path) -> Iterator[Callable[..., Daemon]]:
    """Make daemons for this test's store; at teardown each is stopped and unmounted, and a
    traceback in any daemon log fails the test."""
    made: list[Daemon] = []

    def make(strategy: str | None = None, mnt: Path | None = None, **kw: object) -> Daemon:
        mnt = mnt or tmp_path / "mnt"
        mnt.mkdir(exist_ok=True)
        log = tmp_path / f"daemon-{len(made)}.log"
        daemon = Daemon(store, mnt, identity, log, strategy, **kw)  # type: ignore[arg-type]
        made.append(daemon)
        return daemon

    yield make
    problems = [problem for daemon in made for problem in daemon.close()]
    if problems:
        pytest.fail("; ".join(problems))


@pytest.fixture(params=STRATEGIES)
def mounted(request: pytest.FixtureRequest, daemons: Callable[..., Daemon]) -> Daemon:
    """A mounted store, once per write strategy."""
    daemon = daemons(request.param)
    daemon.start()
    return daemon
