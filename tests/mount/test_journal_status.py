"""Pending change-journal records shown and checked: `cagefs status` counts them, `cagefs
verify` reads every one as recovery would (a damaged one is damage, exit 8, named), and a mount
keeps at most `--max-journaled-files` files with records, folding the oldest at once."""

import json
import random
from collections.abc import Callable
from pathlib import Path

import pyrage

from cagefs.errors import ExitCode

from .helpers import Daemon, cagefs, decrypt_backing, free_slot, records
from .test_journal import MIB, edit, identity_of, wait_for


def record_paths(daemon: Daemon) -> dict[str, int]:
    """The plaintext path each pending record belongs to (read with pyrage), with counts."""
    paths: dict[str, int] = {}
    for record in records(daemon.store):
        raw = record.read_bytes()
        if free_slot(raw):
            continue  # a slot zeroed since it was listed: its record was folded
        plain = pyrage.decrypt(raw, [identity_of(daemon)])
        path = json.loads(plain.split(b"\n", 2)[1])["path"]
        paths[path] = paths.get(path, 0) + 1
    return paths


def settled_record_paths(daemon: Daemon) -> set[str] | None:
    """record_paths' paths, or None where a slot was read while the mount was zeroing it
    (folding frees a record's slot with writes of zeros that a read can land between)."""
    try:
        return set(record_paths(daemon))
    except pyrage.DecryptError:
        return None


def make_files(daemon: Daemon, names: list[str], size: int = MIB) -> dict[str, bytearray]:
    """Published files of `size` random bytes each (large enough to get records)."""
    data = {name: bytearray(random.Random(name).randbytes(size)) for name in names}
    for name, content in data.items():
        (daemon.mnt / name).write_bytes(content)
    daemon.remount()
    return data


def test_status_and_verify_show_pending_records_and_verify_finds_a_damaged_one(
    daemons: Callable[..., Daemon], identity: Path
) -> None:
    daemon = daemons("auto", options=["--compact-idle", "600s"])
    daemon.start()
    data = make_files(daemon, ["a.bin", "b.bin"])
    for offset in (0, 500_000):
        edit(daemon.mnt / "a.bin", offset, b"edit of a")
    edit(daemon.mnt / "b.bin", 7, b"edit of b")
    assert record_paths(daemon) == {"a.bin": 2, "b.bin": 1}

    [report] = json.loads(cagefs("status", daemon.mnt, "--json").stdout)
    assert report["journal"]["files"] == 2 and report["journal"]["records"] == 3
    assert report["journal"]["bytes"] == sum(r.stat().st_size for r in records(daemon.store))
    entries = {entry["path"]: entry["records"] for entry in report["files"]}
    assert (entries.get("a.bin"), entries.get("b.bin")) == (2, 1), report["files"]
    text = cagefs("status", daemon.mnt).stdout
    assert "journal: 3 record(s) of 2 file(s)" in text, text

    beside = cagefs("verify", daemon.store, "-i", identity)  # read-only: beside the mount
    assert beside.returncode == 0, beside.stdout + beside.stderr
    assert "3 journal record(s) not yet folded into a.bin, b.bin" in beside.stderr
    as_json = json.loads(cagefs("verify", daemon.store, "-i", identity, "--json").stdout)
    assert as_json["journal"] == {"records": 3, "files": ["a.bin", "b.bin"]}

    daemon.kill9()
    damaged = records(daemon.store)[-1]
    raw = bytearray(damaged.read_bytes())
    raw[-10] ^= 0x40
    damaged.write_bytes(raw)
    found = cagefs("verify", daemon.store, "-i", identity)
    assert found.returncode == ExitCode.DAMAGE, found.stdout + found.stderr
    [line] = found.stdout.splitlines()
    relative = damaged.relative_to(daemon.store)
    assert line.startswith(f"{relative}: ") and "damaged" in line, line
    assert "2 journal record(s) not yet folded" in found.stderr, found.stderr
    assert "1 with problems" in found.stderr, found.stderr
    as_json = json.loads(cagefs("verify", daemon.store, "-i", identity, "--json").stdout)
    assert [p["path"] for p in as_json["problems"]] == [str(relative)]
    assert damaged.exists() and len(records(daemon.store)) == 3, "verify changed the journal"
    assert decrypt_backing(daemon.store / "b.bin.age", identity) == data["b.bin"]


def test_past_max_journaled_files_the_oldest_are_folded_at_once(
    daemons: Callable[..., Daemon], identity: Path
) -> None:
    names = [f"f{i}.bin" for i in range(7)]
    daemon = daemons(
        "auto", options=["--compact-idle", "600s", "-o", "max_journaled_files=3"]
    )
    daemon.start()
    data = make_files(daemon, names)
    for i, name in enumerate(names):  # each edit makes its file the newest with records
        marker = f"edit {i} of {name}".encode()
        edit(daemon.mnt / name, 1000 * i + 3, marker)
        data[name][1000 * i + 3 : 1000 * i + 3 + len(marker)] = marker
    newest = set(names[-3:])
    wait_for(lambda: settled_record_paths(daemon) == newest)
    assert all(count == 1 for count in record_paths(daemon).values())
    for name in names[:-3]:  # folded: their backing files are current for stock tools
        assert decrypt_backing(daemon.store / f"{name}.age", identity) == data[name], name
    for name in names:
        assert (daemon.mnt / name).read_bytes() == data[name], name
    daemon.kill9()  # the newest three are recovered from their records at the next mount
    daemon.start()
    assert records(daemon.store) == []
    for name in names:
        assert (daemon.mnt / name).read_bytes() == data[name], name
        assert decrypt_backing(daemon.store / f"{name}.age", identity) == data[name], name
