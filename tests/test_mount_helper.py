"""mount(8) and fstab: `mount -t fuse.cagefs STORE MNT -o ...` really mounts, `umount` really
unmounts, and the mount reads as the store's path in mountinfo.

mount(8) looks for helpers only in /sbin, and mount.fuse3 runs `cagefs` from a fixed PATH, so
each test runs in a private mount namespace where a tmpfs over /usr/sbin (or /usr/local/bin)
holds this tree's cagefs under the name mount(8) looks for: the real system is not touched.
"""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_mount_cli import PASSPHRASE

from cagefs.errors import ExitCode
from cagefs.store import init_store
from cagefs.store.lock import StoreBusy, lock_store

ROOT = Path(__file__).resolve().parent.parent
SAVE_TIMEOUT = 120.0
# As pip's console script does it, but importing this tree's cagefs.
LAUNCHER = f"""#!{sys.executable}
import sys
sys.path.insert(0, {str(ROOT)!r})
from cagefs.cli.main import main
sys.exit(main())
"""


@pytest.fixture
def place(tmp_path: Path) -> tuple[Path, Path, Path]:
    store, mnt, passfile = tmp_path / "store", tmp_path / "mnt", tmp_path / "pass"
    init_store(store, passphrase=PASSPHRASE.encode(), log_n=10)
    mnt.mkdir()
    passfile.write_text(PASSPHRASE + "\n")
    return store, mnt, passfile


def in_namespace(tmp_path: Path, helper_dir: str, helper_name: str, script: str):
    """Run `script` (sh) where `helper_dir`/`helper_name` is this tree's cagefs; the mount it
    makes stays inside. Waits until the daemon, which outlives `umount`, has saved and exited
    (the store's lock is free again)."""
    launcher = tmp_path / "launcher"
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    setup = (
        f"mount -t tmpfs tmpfs {helper_dir} && cp {launcher} {helper_dir}/{helper_name} && "
        f"cleanup() {{ umount {tmp_path}/mnt 2>/dev/null || true; }}; trap cleanup EXIT; "
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-ec", setup + script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    wait_until_saved(tmp_path / "store")
    return done


def wait_until_saved(store: Path) -> None:
    deadline = time.monotonic() + SAVE_TIMEOUT
    while True:
        try:
            lock_store(store, "test").release()
            return
        except StoreBusy:
            assert time.monotonic() < deadline, "the daemon did not exit after umount"
            time.sleep(0.1)


def mount_line(mountinfo: str, mnt: Path) -> tuple[str, str, str]:
    """(type, source, per-mount options) of `mnt` in /proc/self/mountinfo text."""
    for line in mountinfo.splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4] == str(mnt):
            dash = fields.index("-")
            return fields[dash + 1], fields[dash + 2], fields[5]
    raise AssertionError(f"{mnt} not in mountinfo:\n{mountinfo}")


@pytest.mark.parametrize(
    ("helper_dir", "helper_name"),
    [("/usr/sbin", "mount.fuse.cagefs"), ("/usr/local/bin", "cagefs")],
    ids=["/sbin/mount.fuse.cagefs", "through mount.fuse3"],
)
@pytest.mark.parametrize("options", ["", "rw,nofail,noatime,x-systemd.automount,_netdev"])
def test_mount_t_fuse_cagefs(
    tmp_path: Path, place, helper_dir: str, helper_name: str, options: str
) -> None:
    store, mnt, passfile = place
    if helper_name == "cagefs" and not Path("/usr/sbin/mount.fuse3").exists():
        pytest.skip("fuse3's mount.fuse3 is not installed")
    opts = ",".join(filter(None, [f"passfile={passfile}", "allow_other", options]))
    script = (
        f"mount -t fuse.cagefs {store} {mnt} -o {opts}\n"
        "cat /proc/self/mountinfo\n"
        f"echo 'through mount(8)' > {mnt}/hello.txt\n"
        f"umount {mnt}\n"
    )
    done = in_namespace(tmp_path, helper_dir, helper_name, script)
    assert done.returncode == 0, done.stderr
    kind, source, flags = mount_line(done.stdout, mnt)
    assert (kind, source) == ("fuse.cagefs", str(store))
    if "noatime" in options:
        assert "noatime" in flags.split(",")
    assert (store / "hello.txt.age").read_bytes().startswith(b"age-encryption.org/v1\n")


def test_fstab_line(tmp_path: Path, place) -> None:
    store, mnt, passfile = place
    fstab = tmp_path / "fstab"
    fstab.write_text(
        f"{store} {mnt} fuse.cagefs passfile={passfile},fsname=private-files,"
        "nofail,noauto,x-systemd.automount,_netdev 0 0\n"
    )
    script = f"mount -T {fstab} {mnt}\ncat /proc/self/mountinfo\numount {mnt}\n"
    done = in_namespace(tmp_path, "/usr/sbin", "mount.fuse.cagefs", script)
    assert done.returncode == 0, done.stderr
    assert mount_line(done.stdout, mnt)[:2] == ("fuse.cagefs", "private-files")


def test_a_passphrase_in_the_options_is_refused_unseen(tmp_path: Path, place) -> None:
    store, mnt, _ = place
    script = f"mount -t fuse.cagefs {store} {mnt} -o password=hunter2\n"
    done = in_namespace(tmp_path, "/usr/sbin", "mount.fuse.cagefs", script)
    assert done.returncode != 0
    assert "secrets are read from files only" in done.stderr and "hunter2" not in done.stderr


def test_helper_fake_mount_and_usage(tmp_path: Path) -> None:
    """mount -f only pretends; a helper call that is not one says how it is called."""
    from cagefs.cli.main import main

    assert main(["/nonexistent", str(tmp_path), "-f", "-o", "rw"]) == ExitCode.OK
    assert main(["/nonexistent", str(tmp_path), "-t", "ext4"]) == ExitCode.USAGE
