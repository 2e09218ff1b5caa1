"""`cagefs import` and `cagefs export` without a mount: trees, modes, times, symlinks kept;
no plaintext in the store; sources removed only once verified; problems listed (exit 3)."""

import os
import stat
import subprocess
from pathlib import Path

from conftest import KeyFile
from support import cagefs

from cagefs.errors import ExitCode
from cagefs.store import init_store

MARKER = b"PLAINTEXT-MARKER-0123456789"


def make_tree(src: Path) -> dict[str, bytes]:
    files = {
        "a.txt": MARKER + b" alpha\n",
        "empty": b"",
        "d/big.bin": MARKER + os.urandom(3 << 20),
        "d/e/deep.txt": MARKER + b" deep\n",
    }
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    os.chmod(src / "a.txt", 0o640)
    os.utime(src / "a.txt", ns=(1_000_000_000, 2_000_000_000))
    os.chmod(src / "d/e", 0o750)
    os.utime(src / "d/e", ns=(3_000_000_000, 4_000_000_000))
    (src / "link").symlink_to("d/e/deep.txt")
    os.mkfifo(src / "fifo")
    return files


def go_age(path: Path, keyfile: KeyFile) -> bytes:
    proc = subprocess.run(["age", "-d", "-i", str(keyfile.path), str(path)], capture_output=True)
    assert proc.returncode == 0, f"{path}: {proc.stderr.decode()}"
    return proc.stdout


def store_has(root: Path, marker: bytes) -> list[str]:
    return [
        str(p)
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and marker in p.read_bytes()
    ]


def test_import_then_export_keeps_the_tree(tmp_path: Path, keyfile: KeyFile) -> None:
    src, root, dest = tmp_path / "src", tmp_path / "store", tmp_path / "dest"
    src.mkdir()
    files = make_tree(src)
    init_store(root, identities=[keyfile.identity])
    proc = cagefs("import", src, root, "-i", keyfile.path)
    assert proc.returncode == ExitCode.DAMAGE, proc.stderr
    assert proc.stdout.decode().splitlines() == [
        "fifo: not imported: special files cannot be stored (as on a mount)"
    ]
    assert store_has(root, MARKER) == []
    for name, data in files.items():
        assert go_age(root / f"{name}.age", keyfile) == data, name
    assert (root / "link").readlink() == Path("d/e/deep.txt")
    assert os.stat(root / "a.txt.age").st_mtime_ns == 2_000_000_000
    assert stat.S_IMODE(os.stat(root / "d/e").st_mode) == 0o750
    assert os.stat(root / "d/e").st_mtime_ns == 4_000_000_000
    assert cagefs("verify", root, "-i", keyfile.path).returncode == 0
    assert os.listdir(root / ".cagefs/tmp") == []

    again = cagefs("import", src, root, "-i", keyfile.path)
    assert again.returncode == ExitCode.DAMAGE
    assert "a.txt: not imported: already in the store" in again.stdout.decode()
    assert go_age(root / "a.txt.age", keyfile) == files["a.txt"]

    exported = cagefs("export", root, dest, "-i", keyfile.path)
    assert exported.returncode == 0, exported.stdout + exported.stderr
    for name, data in files.items():
        assert (dest / name).read_bytes() == data, name
    assert (dest / "link").readlink() == Path("d/e/deep.txt")
    st = os.stat(dest / "a.txt")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o640, 2_000_000_000)
    assert os.stat(dest / "d/e").st_mtime_ns == 4_000_000_000
    assert not (dest / "fifo").exists() and not (dest / ".cagefs").exists()

    refused = cagefs("export", root, dest, "-i", keyfile.path)
    assert refused.returncode == 1 and b"not an empty directory" in refused.stderr


def test_import_with_the_auth_key_only_removes_verified_sources(
    tmp_path: Path, keyfile: KeyFile
) -> None:
    src, root = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    files = make_tree(src)
    init_store(root, identities=[keyfile.identity])
    key = tmp_path / "auth.key"
    assert (
        cagefs("recipients", "export-auth-key", root, "-o", key, "-i", keyfile.path).returncode == 0
    )
    proc = cagefs("import", src, root, "--auth-key-file", key, "--remove-source")
    assert proc.returncode == ExitCode.DAMAGE, proc.stderr
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == ["fifo"]
    for name, data in files.items():
        assert go_age(root / f"{name}.age", keyfile) == data, name
    assert cagefs("verify", root, "-i", keyfile.path).returncode == 0


def test_export_lists_damaged_and_planted_files_and_writes_none_of_them(
    tmp_path: Path, keyfile: KeyFile
) -> None:
    src, root, dest = tmp_path / "src", tmp_path / "store", tmp_path / "dest"
    src.mkdir()
    (src / "ok").write_bytes(b"ok")
    (src / "bad").write_bytes(os.urandom(200_000))
    init_store(root, identities=[keyfile.identity])
    assert cagefs("import", src, root, "-i", keyfile.path).returncode == 0
    data = bytearray((root / "bad.age").read_bytes())
    data[-5] ^= 1
    (root / "bad.age").write_bytes(bytes(data))
    subprocess.run(
        ["age", "-r", keyfile.recipient, "-o", str(root / "planted.age")], input=b"x", check=True
    )
    proc = cagefs("export", root, dest, "-i", keyfile.path)
    assert proc.returncode == ExitCode.DAMAGE
    lines = proc.stdout.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == ["bad", "planted"]
    assert sorted(os.listdir(dest)) == ["ok"]


def test_import_and_export_refusals(tmp_path: Path, keyfile: KeyFile, new_keyfile) -> None:
    root = tmp_path / "store"
    init_store(root, identities=[keyfile.identity])
    stranger = new_keyfile("stranger.txt")
    (tmp_path / "f").write_bytes(b"f")
    cases = [
        (["import", tmp_path / "nothing", root, "-i", keyfile.path], "no such file", 1),
        (["import", tmp_path / "f", tmp_path / "nostore", "-i", keyfile.path], "no such store", 4),
        (["import", tmp_path / "f", root, "-i", stranger.path], "cannot read store", 3),
        (["import", tmp_path / "f", root, "--auth-key-file", keyfile.path], "not a cagefs auth", 1),
        (["export", root, tmp_path / "out", "-i", stranger.path], "cannot read store", 3),
    ]
    for args, expected, code in cases:
        proc = cagefs(*args)
        lines = proc.stderr.decode().strip().splitlines()
        assert proc.returncode == code and len(lines) == 1 and expected in lines[0], (args, lines)
    assert not (root / "f.age").exists()
