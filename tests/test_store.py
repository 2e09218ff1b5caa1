"""The store around the filesystem: config.toml, init variants, the canary and the keyring."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import KeyFile, make_keyfile, run_on_tty
from mount.helpers import cagefs

from cagefs.age.scrypt import ScryptIdentity
from cagefs.errors import CageError
from cagefs.store import init_store, open_store
from cagefs.store.config import StoreConfig
from cagefs.store.keyring import CANARY_TEXT, read_age_file
from cagefs.store.layout import CANARY_FILE, CONFIG_FILE, IDENTITY_FILE, META_DIR, TMP_DIR

FAST_LOG_N = 10  # the CLI always uses 18; tests of the Python API keep scrypt cheap


def never_ask(prompt: str) -> str:
    raise AssertionError(f"unexpected prompt {prompt!r}")


def answer(passphrase: str):
    return lambda prompt: passphrase


def generated_store(tmp_path: Path, passphrase: bytes = b"correct horse") -> Path:
    root = tmp_path / "store"
    init_store(root, passphrase=passphrase, log_n=FAST_LOG_N)
    return root


def one_line_error(proc: subprocess.CompletedProcess, verb: str) -> str:
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"cagefs {verb}: ")
    return lines[0]


# --- config.toml ---------------------------------------------------------------------------


def meta_root(tmp_path: Path) -> Path:
    (tmp_path / TMP_DIR).mkdir(parents=True)
    return tmp_path


def test_config_round_trip(tmp_path: Path) -> None:
    root = meta_root(tmp_path)
    odd = 'ssh-ed25519 AAAA "quoted" back\\slash tab\there ctl\x01\x7f é 🔑'
    config = StoreConfig(
        recipients=["age1abc", odd],
        strategy="tempfile",
        memory_threshold=123,
        chunk_cache_mib=7,
        publish_interval=0.25,
    )
    config.save(root)
    assert StoreConfig.load(root) == config
    assert tomllib.loads((root / CONFIG_FILE).read_text())["recipients"][1] == odd
    assert os.listdir(root / TMP_DIR) == []


def test_config_defaults_fill_missing_keys(tmp_path: Path) -> None:
    root = meta_root(tmp_path)
    (root / CONFIG_FILE).write_text('format_version = 1\nrecipients = ["age1x"]\n')
    assert StoreConfig.load(root) == StoreConfig(recipients=["age1x"])
    assert StoreConfig().memory_threshold == 64 << 20
    assert StoreConfig().chunk_cache_mib == 32  # issue 16: with fio's peak, ≤ 150 MiB


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('format_version = 1\nrecipients = ["a"]\nstrategi = "auto"\n', "unknown setting"),
        ('format_version = 2\nrecipients = ["a"]\n', "store format 2 is not supported"),
        ('recipients = ["a"]\n', "store format None is not supported"),
        ("format_version = 1\nrecipients = [\n", "not valid TOML"),
        ("format_version = 1\nrecipients = []\n", "recipients is empty"),
        ('format_version = 1\nrecipients = ["a"]\nstrategy = "fast"\n', "strategy must be one"),
        ('format_version = 1\nrecipients = ["a"]\nmemory_threshold = -1\n', "memory_threshold"),
        ('format_version = 1\nrecipients = ["a"]\npublish_interval = 0\n', "publish_interval"),
        ('format_version = 1\nrecipients = ["a"]\nsuffix = ".gpg"\n', "suffix must be"),
    ],
)
def test_config_load_refuses_clearly(tmp_path: Path, text: str, message: str) -> None:
    root = meta_root(tmp_path)
    (root / CONFIG_FILE).write_text(text)
    with pytest.raises(CageError, match=message) as caught:
        StoreConfig.load(root)
    assert "\n" not in str(caught.value)


# --- init and open through the Python API ---------------------------------------------------


def test_generated_identity_is_kept_under_the_passphrase(tmp_path: Path) -> None:
    root = generated_store(tmp_path)
    identity_text = read_age_file(root / IDENTITY_FILE, [ScryptIdentity(b"correct horse")])
    assert identity_text.startswith(b"# created: ")
    assert b"AGE-SECRET-KEY-1" in identity_text
    meta = sorted(os.listdir(root / META_DIR))
    assert meta == ["auth.age", "canary.age", "config.toml", "identity.age", "lock", "tmp"]
    assert os.listdir(root / TMP_DIR) == []
    store = open_store(root, passfile=None, ask_passphrase=answer("correct horse"))
    assert [str(r) for r in store.recipients] == store.config.recipients
    assert read_age_file(root / CANARY_FILE, store.identities) == CANARY_TEXT


def test_wrong_passphrase_is_refused(tmp_path: Path) -> None:
    root = generated_store(tmp_path)
    with pytest.raises(CageError) as caught:
        open_store(root, ask_passphrase=answer("wrong horse"))
    assert str(caught.value) == f"wrong passphrase for store {root}"


def test_identity_that_cannot_read_the_canary_is_refused(tmp_path: Path) -> None:
    root = generated_store(tmp_path)
    stranger = make_keyfile(tmp_path / "stranger.txt").identity
    with pytest.raises(CageError) as caught:
        open_store(root, [stranger], ask_passphrase=never_ask)
    assert str(caught.value) == f"this identity cannot read store {root}"


def test_damaged_canary_is_reported(tmp_path: Path) -> None:
    root = generated_store(tmp_path)
    canary = root / CANARY_FILE
    data = bytearray(canary.read_bytes())
    data[-5] ^= 1
    canary.write_bytes(bytes(data))
    with pytest.raises(CageError, match=r"canary\.age is damaged"):
        open_store(root, ask_passphrase=answer("correct horse"))


def test_open_refuses_missing_and_foreign_stores(tmp_path: Path) -> None:
    with pytest.raises(CageError, match="no such store"):
        open_store(tmp_path / "absent", ask_passphrase=never_ask)
    with pytest.raises(CageError, match="is not a cagefs store"):
        open_store(tmp_path, ask_passphrase=never_ask)


# --- init through the CLI --------------------------------------------------------------------


def test_init_with_identity_and_extra_recipients(tmp_path: Path, keyfile: KeyFile) -> None:
    friend = make_keyfile(tmp_path / "friend.txt")
    third = make_keyfile(tmp_path / "third.txt")
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# team\n{third.recipient}\n{keyfile.recipient}\n")
    root = tmp_path / "new" / "store"
    proc = cagefs(
        "init", root, "--identity", keyfile.path, "-r", friend.recipient, "-R", recipients_file
    )
    assert proc.returncode == 0, proc.stderr
    config = StoreConfig.load(root)
    assert config.recipients == [keyfile.recipient, friend.recipient, third.recipient]
    assert not (root / IDENTITY_FILE).exists()
    for key in (keyfile, friend, third):  # the Go age CLI reads the canary with each key
        out = subprocess.run(
            ["age", "-d", "-i", key.path, root / CANARY_FILE], capture_output=True, check=True
        )
        assert out.stdout == CANARY_TEXT


def test_init_generated_with_passfile_then_unlock(tmp_path: Path) -> None:
    passfile = tmp_path / "pass"
    passfile.write_text("s3cret phrase\nignored second line\n")
    root = tmp_path / "store"
    proc = cagefs("init", root, "--passfile", passfile)
    assert proc.returncode == 0, proc.stderr
    store = open_store(root, passfile=str(passfile), ask_passphrase=never_ask)
    assert len(store.identities) == 1
    assert store.config.recipients == [str(store.identities[0].recipient())]


def test_init_on_a_terminal_asks_twice(tmp_path: Path) -> None:
    root = tmp_path / "store"
    rc, shown = run_on_tty(
        [sys.executable, "-m", "cagefs", "init", str(root)],
        [(b"New passphrase for the store: ", b"one"), (b"Confirm passphrase: ", b"two")],
    )
    assert rc == 1
    assert b"the passphrases do not match" in shown
    assert not root.exists() or not (root / CONFIG_FILE).exists()


def test_init_refusals(tmp_path: Path, keyfile: KeyFile) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    error = one_line_error(cagefs("init", foreign, "--identity", keyfile.path), "init")
    assert error.endswith("is not empty and is not a cagefs store")

    ours = tmp_path / "ours"
    assert cagefs("init", ours, "--identity", keyfile.path).returncode == 0
    error = one_line_error(cagefs("init", ours, "--identity", keyfile.path), "init")
    assert error.endswith("is already a cagefs store")

    passfile = tmp_path / "pass"
    passfile.write_text("x\n")
    other = tmp_path / "other"
    error = one_line_error(
        cagefs("init", other, "--identity", keyfile.path, "--passfile", passfile), "init"
    )
    assert "--passfile" in error
    assert not other.exists()

    empty_passfile = tmp_path / "empty"
    empty_passfile.write_text("")
    error = one_line_error(cagefs("init", other, "--passfile", empty_passfile), "init")
    assert error.endswith("the passphrase file is empty")

    no_tty = subprocess.run(
        [sys.executable, "-m", "cagefs", "init", other],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,  # no controlling terminal, as under a service manager
        check=False,
    )
    assert "give --passfile FILE" in one_line_error(no_tty, "init")


def test_init_finishes_an_interrupted_init(tmp_path: Path, keyfile: KeyFile) -> None:
    root = tmp_path / "store"
    (root / TMP_DIR).mkdir(parents=True)  # what an init killed before config.toml leaves
    assert cagefs("init", root, "--identity", keyfile.path).returncode == 0
    assert StoreConfig.load(root).recipients == [keyfile.recipient]
