"""Shared test helpers: a throwaway identity file, and running a program on a real terminal."""

import os
import select
import shlex
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from cagefs.age.keys import identity_file_text
from cagefs.age.x25519 import X25519Identity


@dataclass
class KeyFile:
    """An X25519 identity and the age-keygen style file it was written to."""

    path: Path
    identity: X25519Identity

    @property
    def recipient(self) -> str:
        return str(self.identity.recipient())


def first_difference(got: bytes, want: bytes | bytearray) -> int | None:
    """Where two byte strings first differ (the shorter one's length if it is the other's
    start), None if they are equal: what a failed content check shows instead of buffers."""
    if got == want:
        return None
    return next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )


def make_keyfile(path: Path) -> KeyFile:
    identity = X25519Identity.generate()
    path.write_text(identity_file_text(identity))
    return KeyFile(path, identity)


@pytest.fixture
def keyfile(tmp_path: Path) -> KeyFile:
    return make_keyfile(tmp_path / "key.txt")


@pytest.fixture
def new_keyfile(tmp_path: Path) -> Callable[[str], KeyFile]:
    """Make more identity files in tmp_path, by name."""
    return lambda name: make_keyfile(tmp_path / name)


@pytest.fixture
def on_tty() -> Callable[..., tuple[int, bytes]]:
    """`run_on_tty`, for tests (fixtures keep working whatever the test import mode)."""
    return run_on_tty


def run_on_tty(
    argv: list[str], answers: list[tuple[bytes, bytes]], timeout: float = 120
) -> tuple[int, bytes]:
    """Run `argv` with a pseudo-terminal as its controlling tty (via util-linux `script`).

    For each (prompt, answer) in order, wait until `prompt` has been shown, then type `answer`
    and Enter. Returns the exit status and everything the terminal showed. This is how tools
    that read passphrases only from /dev/tty (`age -p`, `cagefs -p`) are driven for real.
    """
    proc = subprocess.Popen(
        ["script", "-qefc", shlex.join(argv), "/dev/null"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    deadline = time.monotonic() + timeout
    shown, seen_up_to = b"", 0
    try:
        for prompt, answer in answers:
            while (found := shown.find(prompt, seen_up_to)) < 0:
                shown += _read_some(proc.stdout.fileno(), deadline)
            seen_up_to = found + len(prompt)
            proc.stdin.write(answer + b"\n")
            proc.stdin.flush()
        while chunk := _read_some(proc.stdout.fileno(), deadline):
            shown += chunk
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), shown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def _read_some(fd: int, deadline: float) -> bytes:
    """The next output of the program; b"" once it has closed its end."""
    ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise TimeoutError("program on the terminal did not show the expected prompt in time")
    return os.read(fd, 65536)
