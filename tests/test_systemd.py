"""systemd/: the units, checked without systemd as PID 1 (it is not, here or in CI).

`systemd-analyze verify` must accept `cagefs@.service`, alone and with the identity drop-in.
Then the commands are run the way systemd would run them: `ExecStart=` and `ExecStop=` are
expanded as systemd expands them (`%i`, `%d` the credentials directory, `${VAR}` as one word and
`$VAR` split into words, from the `EnvironmentFile=`), started with `$NOTIFY_SOCKET` set, and
must behave as the unit's settings assume: `Type=notify` with `NotifyAccess=main` needs READY=1
from the very process started; `ExecStop=` must publish and end that process with status 0;
`KillSignal=SIGTERM` must do the same.
"""

import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import make_keyfile
from mount.helpers import force_unmount, is_mounted

from cagefs.errors import ExitCode
from cagefs.store import init_store

SYSTEMD = Path(__file__).resolve().parent.parent / "systemd"
UNIT = SYSTEMD / "cagefs@.service"
USER_UNIT = SYSTEMD / "user" / "cagefs@.service"
FSTAB_GENERATOR = "/usr/lib/systemd/system-generators/systemd-fstab-generator"
IDENTITY_DROP_IN = SYSTEMD / "identity.conf.example"
EXAMPLE_ENV = SYSTEMD / "cagefs-example.env"
INSTALLED = "/usr/local/bin/cagefs"  # where the unit expects the command (README, systemd)
CAGEFS = Path(sys.executable).with_name("cagefs")  # the same console script, in the venv
INSTANCE = "demo"
PASSPHRASE = "systemd test passphrase"
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0
_UCRED = struct.Struct("3i")


def settings(*unit_files: Path) -> dict[str, list[str]]:
    """Key → values across a unit and its drop-ins, in order; an empty value resets the list
    (how a drop-in replaces `ExecStart=` or `LoadCredential=`)."""
    found: dict[str, list[str]] = {}
    for path in unit_files:
        for line in path.read_text().splitlines():
            if not line or line[0] in "#;[" or "=" not in line:
                continue
            key, value = line.split("=", 1)
            found[key] = [*found.get(key, []), value] if value else []
    return found


def environment_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if "=" in line]
    return {key: value for key, value in pairs if not key.startswith("#")}


def expand(command: str, env: dict[str, str], credentials: Path) -> list[str]:
    """One `Exec*=` line as systemd runs it."""
    words = []
    for word in shlex.split(command.replace("%i", INSTANCE).replace("%d", str(credentials))):
        if whole := re.fullmatch(r"\$(\w+)", word):
            words += env.get(whole[1], "").split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda m: env.get(m[1], ""), word))
    assert words[0] == INSTALLED, f"the unit runs {words[0]}, not {INSTALLED}"
    return [str(CAGEFS), *words[1:]]


def load_credentials(lines: list[str], into: Path, files: dict[str, Path]) -> None:
    """`LoadCredential=NAME:PATH` copies PATH to `$CREDENTIALS_DIRECTORY/NAME` (%d/NAME); the
    unit's paths are under /etc/cagefs, so `files` says which test file stands for each."""
    into.mkdir(mode=0o700)
    for line in lines:
        name, source = line.replace("%i", INSTANCE).split(":", 1)
        assert source == f"/etc/cagefs/{INSTANCE}.{files[name].suffix.lstrip('.')}", source
        shutil.copy(files[name], into / name)


@dataclass
class Service:
    """The main process of one start of the unit, and its notify socket."""

    proc: subprocess.Popen
    mnt: Path
    sock: socket.socket

    def messages(self) -> list[bytes]:
        """Every notify message received since READY=1, without waiting for more."""
        self.sock.settimeout(0)
        found = []
        with contextlib.suppress(BlockingIOError):
            while True:
                found += self.sock.recv(4096).split(b"\n")
        return found

    def stop_with(self, command: list[str]) -> int:
        done = subprocess.run(command, capture_output=True, text=True, timeout=STOP_TIMEOUT)
        assert done.returncode == 0, done.stderr
        return self.proc.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def started(command: list[str], env: dict[str, str], mnt: Path, tmp: Path) -> Iterator[Service]:
    """Start the main process with a notify socket and wait for READY=1, checking it came from
    that process (NotifyAccess=main). Whatever happens, nothing stays mounted or running."""
    notify_path = tmp / "notify"
    notify_path.unlink(missing_ok=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        proc = subprocess.Popen(
            command,
            env={**os.environ, **env, "NOTIFY_SOCKET": str(notify_path)},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert ready_sender(sock, proc) == proc.pid, "READY=1 came from another process"
            yield Service(proc, mnt, sock)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            force_unmount(mnt)


def ready_sender(sock: socket.socket, proc: subprocess.Popen) -> int:
    """The pid that sent READY=1 (from the kernel's SCM_CREDENTIALS, not from the message)."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            output = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"the service exited with {proc.returncode}: {output}")
        try:
            message, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
        except TimeoutError:
            continue
        if b"READY=1" in message.split(b"\n"):
            for level, kind, data in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    return _UCRED.unpack(data[: _UCRED.size])[0]
            raise AssertionError("READY=1 without the sender's credentials")
    raise AssertionError(f"no READY=1 within {READY_TIMEOUT}s")


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    """A store and mount point, and the example environment file pointed at them."""
    store, mnt = tmp_path / "store", tmp_path / "mnt"
    mnt.mkdir()
    env = environment_file(EXAMPLE_ENV)
    assert set(env) == {"CAGEFS_STORE", "CAGEFS_MOUNTPOINT", "CAGEFS_OPTIONS"}
    env.update(CAGEFS_STORE=str(store), CAGEFS_MOUNTPOINT=str(mnt))
    return store, mnt, env


@pytest.fixture(scope="session")
def man_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MANPATH holding the generated cagefs(1), which the units' Documentation= names:
    `systemd-analyze verify` runs `man` on it."""
    pytest.importorskip("argparse_manpage", reason="the test extra (argparse-manpage, shtab)")
    out = tmp_path_factory.mktemp("docs")
    subprocess.run(
        [SYSTEMD.parent / "scripts/gen-docs.sh", out],
        env={**os.environ, "PYTHON": sys.executable},
        check=True,
        timeout=120,
    )
    (out / "man1").mkdir()
    (out / "cagefs.1").rename(out / "man1/cagefs.1")
    return out


def verify(unit: Path, man_path: Path, *flags: str) -> None:
    runtime = unit.parent / "runtime"  # a user manager wants one, even offline
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {**os.environ, "MANPATH": str(man_path), "XDG_RUNTIME_DIR": str(runtime)}
    done = subprocess.run(
        ["systemd-analyze", *flags, "verify", str(unit)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        cwd=unit.parent,
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


@pytest.mark.parametrize("drop_ins", [[], [IDENTITY_DROP_IN]], ids=["unit", "identity drop-in"])
def test_systemd_analyze_verify_accepts_the_unit(
    tmp_path: Path, drop_ins: list[Path], man_path: Path
) -> None:
    unit = tmp_path / f"cagefs@{INSTANCE}.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, str(CAGEFS)))
    if drop_ins:
        (tmp_path / f"{unit.name}.d").mkdir()
        for drop_in in drop_ins:
            text = drop_in.read_text().replace(INSTALLED, str(CAGEFS))
            (tmp_path / f"{unit.name}.d" / drop_in.name.removesuffix(".example")).write_text(text)
    verify(unit, man_path)


def test_the_per_user_unit_verifies(tmp_path: Path, man_path: Path) -> None:
    unit = tmp_path / f"cagefs@{INSTANCE}.service"
    unit.write_text(USER_UNIT.read_text().replace("%h/.local/bin/cagefs", str(CAGEFS)))
    verify(unit, man_path, "--user")


def test_the_shipped_mount_units_are_what_fstab_generator_makes(tmp_path: Path) -> None:
    """systemd-fstab-generator on fstab.example gives the shipped .mount/.automount, and they
    verify (--man=no: fstab(5) need not be installed here)."""
    out = tmp_path / "generated"
    out.mkdir()
    subprocess.run(
        [FSTAB_GENERATOR, out, out, out],
        env={**os.environ, "SYSTEMD_FSTAB": str(SYSTEMD / "fstab.example")},
        check=True,
    )
    for name in ("mnt-private.mount", "mnt-private.automount"):
        made = [line for line in (out / name).read_text().splitlines()[1:] if "=" in line]
        shipped = [line for line in (SYSTEMD / name).read_text().splitlines()[1:] if "=" in line]
        assert [line for line in made if not line.startswith("SourcePath=")] == shipped, name
        done = subprocess.run(
            ["systemd-analyze", "verify", "--man=no", out / name],
            capture_output=True,
            text=True,
            check=False,
            cwd=out,
        )
        assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_unit_is_hardened(tmp_path: Path) -> None:
    """As far as FUSE allows: no mount namespace (it would hide the mount), the rest on."""
    unit = tmp_path / f"cagefs@{INSTANCE}.service"
    unit.write_text(UNIT.read_text())
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    exposure = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert exposure, done.stdout[-2000:] + done.stderr
    assert float(exposure[1]) <= 4.5, done.stdout
    for setting in ("ProtectSystem", "PrivateTmp", "ProtectHome", "PrivateDevices"):
        assert setting not in settings(UNIT), f"{setting}= would hide the mount from the host"


def test_passphrase_unit_mounts_notifies_and_stops(tmp_path: Path, place) -> None:
    store, mnt, env = place
    init_store(store, passphrase=PASSPHRASE.encode(), log_n=10)
    passphrase = tmp_path / "secret.passphrase"
    passphrase.write_text(PASSPHRASE + "\n")
    unit = settings(UNIT)
    assert unit["Type"] == ["notify"] and unit["NotifyAccess"] == ["main"]
    assert unit["KillSignal"] == ["SIGTERM"]
    credentials = tmp_path / "credentials"
    load_credentials(unit["LoadCredential"], credentials, {"passphrase": passphrase})
    [start], [stop] = unit["ExecStart"], unit["ExecStop"]
    assert "%d/passphrase" in start and PASSPHRASE not in start

    with started(expand(start, env, credentials), env, mnt, tmp_path) as service:
        (mnt / "hello.txt").write_text("written under systemd\n")
        assert service.stop_with(expand(stop, env, credentials)) == 0
    assert not is_mounted(mnt)
    assert (store / "hello.txt.age").exists()

    with started(expand(start, env, credentials), env, mnt, tmp_path) as service:
        assert (mnt / "hello.txt").read_text() == "written under systemd\n"
        (mnt / "second.txt").write_text("saved on SIGTERM\n")
        service.proc.send_signal(signal.SIGTERM)  # what systemd sends if ExecStop fails
        assert service.proc.wait(STOP_TIMEOUT) == 0
        said = service.messages()
        assert b"STOPPING=1" in said, said  # then how long the save may take past the timeout
        assert any(message.startswith(b"EXTEND_TIMEOUT_USEC=") for message in said), said
    assert not is_mounted(mnt)
    assert (store / "second.txt.age").exists()


def test_identity_drop_in_mounts_with_the_key_as_a_credential(tmp_path: Path, place) -> None:
    store, mnt, env = place
    key = make_keyfile(tmp_path / "secret.key")
    init_store(store, identities=[key.identity])
    unit = settings(UNIT, IDENTITY_DROP_IN)
    credentials = tmp_path / "credentials"
    load_credentials(unit["LoadCredential"], credentials, {"identity": key.path})
    [start], [stop] = unit["ExecStart"], unit["ExecStop"]
    assert "-i %d/identity" in start

    with started(expand(start, env, credentials), env, mnt, tmp_path) as service:
        (mnt / "keyed.txt").write_text("unlocked by a key\n")
        assert service.stop_with(expand(stop, env, credentials)) == 0
    assert (store / "keyed.txt.age").exists()


def test_a_wrong_passphrase_is_not_retried(tmp_path: Path, place) -> None:
    """Restart=on-failure must not retry what cannot work: the unit's ExecStart with a wrong
    passphrase exits with a code listed in RestartPreventExitStatus=."""
    store, mnt, env = place
    init_store(store, passphrase=PASSPHRASE.encode(), log_n=10)
    wrong = tmp_path / "wrong.passphrase"
    wrong.write_text("not the passphrase\n")
    unit = settings(UNIT)
    [prevented] = unit["RestartPreventExitStatus"]
    codes = {int(code) for code in prevented.split()}
    assert codes == {
        ExitCode.USAGE,
        ExitCode.BAD_KEY,
        ExitCode.NO_STORE,
        ExitCode.MOUNTPOINT,
        ExitCode.NO_FUSE,
    }
    credentials = tmp_path / "credentials"
    load_credentials(unit["LoadCredential"], credentials, {"passphrase": wrong})
    [start] = unit["ExecStart"]
    done = subprocess.run(
        expand(start, env, credentials), capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == ExitCode.BAD_KEY, done.stderr
    assert not is_mounted(mnt)
