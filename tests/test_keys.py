"""The key verbs offline: `cagefs recipients`, `cagefs rekey`, `cagefs passwd`.

Backing files are checked with the Go `age` CLI. An interrupted change is a real `kill -9` of
the verb, caught once it has replaced some files (seen by their new inode numbers).
"""

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import KeyFile
from support import cagefs

from cagefs.age.keys import parse_recipient
from cagefs.cli.progress import Progress
from cagefs.errors import ExitCode
from cagefs.store import init_store, open_store
from cagefs.store.auth import AuthKey, Kind
from cagefs.store.keyring import tagger, write_age_file
from cagefs.store.layout import (
    AUTH_FILE,
    CANARY_FILE,
    CONFIG_FILE,
    IDENTITY_FILE,
    KEYCHANGE_FILE,
    TMP_DIR,
)
from cagefs.store.rewrap import AHEAD_SLOTS
from cagefs.store.sealer import SLOT_SIZE
from cagefs.store.verify import GONE, verify_store


def make_store(root: Path, keyfile: KeyFile, files: dict[str, bytes], *more: str) -> AuthKey:
    """A store for `keyfile` (and `more` recipients) holding `files`, tagged as a mount
    writes them; returns its authentication key."""
    store = init_store(root, [parse_recipient(r) for r in more], identities=[keyfile.identity])
    assert store.auth is not None
    for name, plaintext in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        write_age_file(
            root, f"{name}.age", plaintext, store.recipients, tagger(store.auth, Kind.FILE)
        )
    return store.auth


def go_age(path: Path, keyfile: KeyFile) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["age", "-d", "-i", str(keyfile.path), str(path)], capture_output=True, timeout=120
    )


def backing(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.age") if ".cagefs" not in p.relative_to(root).parts)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1, f"expected one line, got {lines}"
    return lines[0]


FILES = {"a.txt": b"alpha\n", "empty": b"", "d/big.bin": os.urandom(3 << 20), "d/e/f": b"f" * 70000}


def test_add_then_remove_with_go_age(tmp_path: Path, keyfile: KeyFile, new_keyfile) -> None:
    root = tmp_path / "store"
    make_store(root, keyfile, FILES)
    os.chmod(root / "a.txt.age", 0o640)
    os.utime(root / "a.txt.age", ns=(1_000_000_000, 2_000_000_000))
    colleague = new_keyfile("colleague.txt")
    added = cagefs("recipients", "add", root, colleague.recipient, "-i", keyfile.path)
    assert added.returncode == 0, added.stderr
    listed = cagefs("recipients", "list", root).stdout.decode().split()
    assert listed == [keyfile.recipient, colleague.recipient]
    for path in [*backing(root), root / CANARY_FILE, root / AUTH_FILE]:
        assert go_age(path, colleague).returncode == 0, path
    for name, plaintext in FILES.items():
        assert go_age(root / f"{name}.age", colleague).stdout == plaintext, name
    st = os.stat(root / "a.txt.age")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 2_000_000_000)
    assert cagefs("verify", root, "-i", colleague.path).returncode == 0

    old_auth = go_age(root / AUTH_FILE, colleague).stdout
    removed = cagefs("recipients", "remove", root, colleague.recipient, "-i", keyfile.path)
    assert removed.returncode == 0, removed.stderr
    for path in [*backing(root), root / CANARY_FILE, root / AUTH_FILE]:
        assert go_age(path, colleague).returncode != 0, f"{path} still opens with a removed key"
    for name, plaintext in FILES.items():
        assert go_age(root / f"{name}.age", keyfile).stdout == plaintext, name
    assert go_age(root / AUTH_FILE, keyfile).stdout != old_auth, "the auth key was not rotated"
    assert cagefs("verify", root, "-i", keyfile.path).returncode == 0
    assert os.listdir(root / TMP_DIR) == []
    assert not (root / KEYCHANGE_FILE).exists()


def test_a_file_the_removed_key_wrote_with_the_old_auth_key_is_refused(
    tmp_path: Path, keyfile: KeyFile, new_keyfile
) -> None:
    """A removed recipient knew the authentication key: after removal, what they tag with it
    is not the store's."""
    root = tmp_path / "store"
    colleague = new_keyfile("colleague.txt")
    old_auth = make_store(root, keyfile, {"a": b"a"}, colleague.recipient)
    assert (
        cagefs("recipients", "remove", root, colleague.recipient, "-i", keyfile.path).returncode
        == 0
    )
    store = open_store(root, [keyfile.identity])
    write_age_file(root, "planted.age", b"evil", store.recipients, tagger(old_auth, Kind.FILE))
    proc = cagefs("verify", root, "-i", keyfile.path)
    assert proc.returncode == ExitCode.DAMAGE
    assert proc.stdout.decode().startswith("planted.age: tagged under another")


def test_bad_input_is_one_line_and_changes_nothing(
    tmp_path: Path, keyfile: KeyFile, new_keyfile
) -> None:
    root = tmp_path / "store"
    make_store(root, keyfile, FILES)
    stranger = new_keyfile("stranger.txt")
    before = {p: p.read_bytes() for p in [*backing(root), root / CONFIG_FILE]}
    cases: list[tuple[list[object], str]] = [
        (["add", root, stranger.recipient, "-i", stranger.path], "cannot read store"),
        (["add", root, "age1notakey", "-i", keyfile.path], "recipient"),
        (["add", root, keyfile.recipient, "-i", keyfile.path], "already a recipient"),
        (["add", root, "-i", keyfile.path], "no recipient given"),
        (["remove", root, stranger.recipient, "-i", keyfile.path], "not a recipient"),
        (["remove", root, keyfile.recipient, "-i", keyfile.path], "at least one recipient"),
        (["add", tmp_path / "nowhere", stranger.recipient, "-i", keyfile.path], "no such store"),
    ]
    for args, expected in cases:
        proc = cagefs("recipients", *args)
        assert proc.returncode in (1, 2, 3, 4), (args, proc.stderr)  # failure, usage, key, store
        assert expected in one_line(proc), args
    assert cagefs("rekey", root, "-i", stranger.path).returncode == 3  # wrong key
    assert {p: p.read_bytes() for p in before} == before
    assert not (root / KEYCHANGE_FILE).exists()


def test_removing_the_key_doing_it_is_refused(
    tmp_path: Path, keyfile: KeyFile, new_keyfile
) -> None:
    root = tmp_path / "store"
    other = new_keyfile("other.txt")
    make_store(root, keyfile, {"a": b"a"}, other.recipient)
    proc = cagefs("recipients", "remove", root, keyfile.recipient, "-i", keyfile.path)
    assert proc.returncode == 1
    assert "would not be a recipient afterwards" in one_line(proc)
    proc = cagefs("recipients", "remove", root, keyfile.recipient, "-i", other.path)
    assert proc.returncode == 0, proc.stderr
    assert go_age(root / "a.age", keyfile).returncode != 0


def test_damaged_and_planted_files_are_listed_and_left_as_they_are(
    tmp_path: Path, keyfile: KeyFile, new_keyfile
) -> None:
    root = tmp_path / "store"
    big = os.urandom(3 << 20)  # rekeyed through a sealer, decrypted into its ring
    make_store(root, keyfile, {"ok": b"fine", "bad": os.urandom(200_000), "bigbad": big})
    damaged = {}
    for name, at in (("bad.age", -100), ("bigbad.age", len(big) // 2)):
        data = bytearray((root / name).read_bytes())
        data[at] ^= 1
        (root / name).write_bytes(bytes(data))
        damaged[name] = bytes(data)
    subprocess.run(
        ["age", "-r", keyfile.recipient, "-o", str(root / "planted.age")], input=b"x", check=True
    )
    planted = (root / "planted.age").read_bytes()
    proc = cagefs("rekey", root, "-i", keyfile.path)
    assert proc.returncode == ExitCode.DAMAGE, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == ["bad.age", "bigbad.age", "planted.age"]
    assert "authenticated" in lines[0] and "authenticated" in lines[1] and "untagged" in lines[2]
    for name, data in damaged.items():
        assert (root / name).read_bytes() == data, name
    assert (root / "planted.age").read_bytes() == planted
    assert go_age(root / "ok.age", keyfile).stdout == b"fine"
    assert not (root / KEYCHANGE_FILE).exists()
    assert os.listdir(root / TMP_DIR) == []


def test_rekey_reads_large_files_ahead_exactly(tmp_path: Path, keyfile: KeyFile) -> None:
    """Files of many read-ahead blocks (rewrap.AHEAD_SLOTS sealer slots each, AHEAD_BLOCKS of
    them in flight), at and around block and chunk boundaries, come out exact (Go `age -d`);
    damage in a late block is found and the file left as it was."""
    block = AHEAD_SLOTS * SLOT_SIZE
    sizes = {"one-block": block, "block-and-a-byte": block + 1, "many": 3 * block + 70_001}
    files = {name: os.urandom(size) for name, size in sizes.items()}
    files["late-damage"] = os.urandom(4 * block + 5)
    root = tmp_path / "store"
    make_store(root, keyfile, files)
    data = bytearray((root / "late-damage.age").read_bytes())
    data[-(block + 100)] ^= 1  # in the last block but one
    (root / "late-damage.age").write_bytes(bytes(data))
    proc = cagefs("rekey", root, "-i", keyfile.path)
    assert proc.returncode == ExitCode.DAMAGE, proc.stderr
    assert [line.split(":")[0] for line in proc.stdout.decode().splitlines()] == [
        "late-damage.age"
    ]
    assert (root / "late-damage.age").read_bytes() == bytes(data)
    for name in sizes:
        got = go_age(root / f"{name}.age", keyfile).stdout
        assert len(got) == len(files[name]) and got == files[name], name
    assert os.listdir(root / TMP_DIR) == []


def replaced(paths: dict[Path, int]) -> int:
    return sum(1 for path, ino in paths.items() if os.stat(path).st_ino != ino)


@pytest.mark.parametrize("verb", ["add", "remove", "rekey"])
def test_a_change_killed_midway_is_finished_by_running_it_again(
    tmp_path: Path, keyfile: KeyFile, new_keyfile: Callable[[str], KeyFile], verb: str
) -> None:
    root = tmp_path / "store"
    colleague = new_keyfile("colleague.txt")
    # Every 15th file is sealed by a sealer process (past 1 MiB): a kill may catch two files
    # in flight, one being read and one being finished.
    files = {
        f"d{i % 4}/f{i:03}": os.urandom((1 << 20) + 70_001 + i if i % 15 == 7 else 50_000 + i)
        for i in range(150)
    }
    make_store(root, keyfile, files, *([] if verb == "add" else [colleague.recipient]))
    inodes = {path: os.stat(path).st_ino for path in backing(root)}
    args = ["rekey", str(root)]
    if verb != "rekey":
        args = ["recipients", verb, str(root), colleague.recipient]
    change = subprocess.Popen(
        [sys.executable, "-m", "cagefs", *args, "-i", str(keyfile.path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while replaced(inodes) < 10 and change.poll() is None:
        assert time.monotonic() < deadline, "nothing replaced in 2 minutes"
        time.sleep(0.002)
    change.kill()
    change.wait()
    at_kill = replaced(inodes)
    assert 0 < at_kill < len(files), f"not caught midway: {at_kill} of {len(files)}"

    refused = cagefs("verify", root, "-i", keyfile.path)
    assert refused.returncode == 1 and "interrupted" in one_line(refused)
    again = cagefs(*args, "-i", keyfile.path)
    assert again.returncode == 0, again.stderr
    assert b"finishing an interrupted key change" in again.stderr
    # Every file was replaced (by the killed run or the resumed one), none lost or doubled.
    assert replaced(inodes) == len(files)
    assert [p.relative_to(root) for p in backing(root)] == sorted(
        Path(f"{n}.age") for n in files
    ), "a file was lost or doubled"
    for name, plaintext in files.items():
        path = root / f"{name}.age"
        assert go_age(path, keyfile).stdout == plaintext, name
        opens = go_age(path, colleague).returncode == 0
        assert opens == (verb != "remove"), f"{name}: the colleague's key opens it: {opens}"
    assert cagefs("verify", root, "-i", keyfile.path).returncode == 0
    expected = [keyfile.recipient] + ([] if verb == "remove" else [colleague.recipient])
    assert cagefs("recipients", "list", root).stdout.decode().split() == expected
    assert os.listdir(root / TMP_DIR) == []


def test_ssh_and_post_quantum_recipients(tmp_path: Path, keyfile: KeyFile) -> None:
    root = tmp_path / "store"
    make_store(root, keyfile, {"a": b"for ssh too"})
    ssh_key = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh_key)], check=True)
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# a colleague\n{ssh_key.with_suffix('.pub').read_text()}")
    added = cagefs("recipients", "add", root, "-R", recipients_file, "-i", keyfile.path)
    assert added.returncode == 0, added.stderr
    proc = subprocess.run(
        ["age", "-d", "-i", str(ssh_key), str(root / "a.age")], capture_output=True, check=False
    )
    assert proc.stdout == b"for ssh too", proc.stderr
    pq = tmp_path / "pq.txt"
    assert cagefs("keygen", "--pq", "-o", pq).returncode == 0
    pq_recipient = cagefs("keygen", "-y", pq).stdout.decode().strip()
    mixed = cagefs("recipients", "add", root, pq_recipient, "-i", keyfile.path)
    assert mixed.returncode == 1 and "cannot share a file" in one_line(mixed)
    assert not (root / KEYCHANGE_FILE).exists()


# --- cagefs passwd ---------------------------------------------------------------------------


def passfile(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text + "\n")
    return path


def test_passwd_with_passfiles(tmp_path: Path) -> None:
    root = tmp_path / "store"
    old, new = passfile(tmp_path, "old", "old phrase"), passfile(tmp_path, "new", "new phrase")
    assert cagefs("init", root, "--passfile", old).returncode == 0
    identity_before = (root / IDENTITY_FILE).read_bytes()

    wrong = cagefs("passwd", root, "--passfile", new, "--new-passfile", old)
    assert wrong.returncode == 3
    assert one_line(wrong) == f"cagefs passwd: wrong passphrase for store {root}"
    assert (root / IDENTITY_FILE).read_bytes() == identity_before

    changed = cagefs("passwd", root, "--passfile", old, "--new-passfile", new)
    assert changed.returncode == 0, changed.stderr
    assert b"new phrase" not in (root / IDENTITY_FILE).read_bytes()
    store = open_store(root, passfile=str(new))
    assert [str(i.recipient()) for i in store.identities] == open_store_recipients(root)
    refused = cagefs("verify", root, "--passfile", old)
    assert refused.returncode == 3 and "wrong passphrase" in one_line(refused)
    assert cagefs("verify", root, "--passfile", new).returncode == 0
    assert os.listdir(root / TMP_DIR) == []


def open_store_recipients(root: Path) -> list[str]:
    return cagefs("recipients", "list", root).stdout.decode().split()


def test_passwd_on_a_terminal(tmp_path: Path, on_tty) -> None:
    root = tmp_path / "store"
    old, new = passfile(tmp_path, "old", "old phrase"), passfile(tmp_path, "new", "typed new")
    assert cagefs("init", root, "--passfile", old).returncode == 0
    argv = [sys.executable, "-m", "cagefs", "passwd", str(root)]
    rc, shown = on_tty(
        argv,
        [
            (b"Passphrase for store", b"old phrase"),
            (b"New passphrase: ", b"typed new"),
            (b"Confirm passphrase: ", b"typed new"),
        ],
    )
    assert rc == 0, shown
    assert b"typed new" not in shown and b"old phrase" not in shown  # never echoed
    assert cagefs("verify", root, "--passfile", new).returncode == 0
    rc, shown = on_tty(argv, [(b"Passphrase for store", b"not it")])
    assert rc == 3 and b"wrong passphrase" in shown


def test_passwd_refusals(tmp_path: Path, keyfile: KeyFile) -> None:
    root = tmp_path / "store"
    make_store(root, keyfile, {})
    proc = cagefs("passwd", root, "--passfile", keyfile.path, "--new-passfile", keyfile.path)
    assert proc.returncode == 1 and "keeps no identity of its own" in one_line(proc)
    proc = cagefs("passwd", tmp_path / "nowhere")
    assert proc.returncode == 4 and "no such store" in one_line(proc)


# --- cagefs verify --json ----------------------------------------------------------------------


def test_verify_json_lists_problems_with_the_damage_exit_code(
    tmp_path: Path, keyfile: KeyFile
) -> None:
    root = tmp_path / "store"
    make_store(root, keyfile, {"ok": b"fine", "d/cut": os.urandom(100_000)})
    data = (root / "d/cut.age").read_bytes()
    (root / "d/cut.age").write_bytes(data[:-10])
    proc = cagefs("verify", root, "-i", keyfile.path, "--json")
    assert proc.returncode == ExitCode.DAMAGE
    report = json.loads(proc.stdout)
    assert report["checked"] == 2
    assert [p["path"] for p in report["problems"]] == ["d/cut.age"]
    assert "cannot be decrypted" in report["problems"][0]["problem"]
    (root / "d/cut.age").unlink()
    clean = cagefs("verify", root, "-i", keyfile.path, "--json")
    assert clean.returncode == 0
    assert json.loads(clean.stdout) == {
        "store": str(root),
        "checked": 1,
        "problems": [],
        "journal": {"records": 0, "files": []},
    }


def test_a_file_removed_while_verify_runs_is_not_damage(tmp_path: Path, keyfile: KeyFile) -> None:
    """Beside a mount, a file listed by verify may be renamed or removed before it is opened."""
    root = tmp_path / "store"
    make_store(root, keyfile, {"a": b"a"})
    store = open_store(root, [keyfile.identity])
    assert list(verify_store(store, False, ["a.age", "gone.age"])) == [
        ("a.age", None),
        ("gone.age", GONE),
    ]


def test_a_crash_after_the_plan_was_removed_leaves_nothing_that_matters(
    tmp_path: Path, keyfile: KeyFile, new_keyfile
) -> None:
    """The plan goes before auth-next.age: a crash between the two leaves only a stray key
    file (encrypted to the recipients), which the store ignores and the next change removes."""
    root = tmp_path / "store"
    colleague = new_keyfile("colleague.txt")
    make_store(root, keyfile, {"a": b"a"}, colleague.recipient)
    assert cagefs("rekey", root, "-i", keyfile.path).returncode == 0
    stray = root / ".cagefs/auth-next.age"
    write_age_file(
        root, ".cagefs/auth-next.age", AuthKey.generate().text(), [keyfile.identity.recipient()]
    )
    assert cagefs("verify", root, "-i", keyfile.path).returncode == 0
    assert (
        cagefs(
            "recipients", "remove", root, colleague.recipient, "--no-rekey", "-i", keyfile.path
        ).returncode
        == 0
    )
    assert not stray.exists()
    assert cagefs("verify", root, "-i", keyfile.path).returncode == 0


def test_progress_line_and_plain_output_when_piped() -> None:
    out = io.StringIO()
    progress = Progress("rekey", files=4, size=4 * 10**6, out=out)
    progress("a", 10**6)
    line = progress.line(time.monotonic() + 1)
    assert line.startswith("cagefs rekey: 1/4 files, 976.6 KiB/3.8 MiB, ")
    assert line.endswith(" left") and "MB/s" in line
    progress.close()
    assert "\r" not in out.getvalue()  # not a terminal: never redrawn in place


def test_progress_is_redrawn_on_a_terminal(tmp_path: Path, keyfile: KeyFile, on_tty) -> None:
    root = tmp_path / "store"
    make_store(root, keyfile, {f"f{i:02}": os.urandom(1 << 20) for i in range(60)})
    rc, shown = on_tty(
        [sys.executable, "-m", "cagefs", "rekey", str(root), "-i", str(keyfile.path)], []
    )
    assert rc == 0, shown
    assert b"\r\x1b[Kcagefs rekey: " in shown and b" files, " in shown and b" left" in shown


def test_a_rekey_out_of_space_keeps_every_file_and_finishes_with_room(
    tmp_path: Path, keyfile: KeyFile
) -> None:
    """On a disk without room for a new version beside the old ones, a rekey (files past
    1 MiB: sealed by sealer processes, finished on a thread) fails with one line and leaves
    every file and no temp; given room, running it again finishes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=7m", "cagefs-full", disk], check=True)
    try:
        root = disk / "store"
        files = {"a": os.urandom(3 << 20), "b": os.urandom((3 << 20) + 1)}
        make_store(root, keyfile, files)
        before = {p: p.read_bytes() for p in backing(root)}
        proc = cagefs("rekey", root, "-i", keyfile.path)
        assert proc.returncode == 1, proc.stderr
        assert "No space left on device" in one_line(proc)
        assert {p: p.read_bytes() for p in backing(root)} == before
        assert os.listdir(root / TMP_DIR) == []

        subprocess.run(["mount", "-o", "remount,size=32m", disk], check=True)
        again = cagefs("rekey", root, "-i", keyfile.path)
        assert again.returncode == 0, again.stderr
        assert b"finishing an interrupted key change" in again.stderr
        for name, plaintext in files.items():
            path = root / f"{name}.age"
            assert path.read_bytes() != before[path], f"{name} was not rekeyed"
            assert go_age(path, keyfile).stdout == plaintext, name
        assert os.listdir(root / TMP_DIR) == []
    finally:
        subprocess.run(["umount", "-l", disk], check=True)
