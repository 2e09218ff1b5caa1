"""ssh-ed25519 and ssh-rsa keys: interop both ways with the Go `age` CLI, using keys made by
`ssh-keygen`, with and without passphrases; mixed recipients; refusals of unsupported keys.

Go age asks for an ssh key's passphrase on the terminal only, so those runs go through a pty.
"""

import os
import pty
import select
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import cagefs, decrypt_bytes, encrypt_bytes

from cagefs.age.errors import HeaderError, KeyFormatError, UnsupportedError
from cagefs.age.header import Stanza
from cagefs.age.keys import load_identity_file, parse_recipient, parse_recipients_file
from cagefs.age.x25519 import X25519Identity

PASSPHRASE = "correct horse ssh"
PLAINTEXT = os.urandom(3 * 65536 + 123)
TTY_TIMEOUT = 60


@dataclass(frozen=True)
class SSHKey:
    kind: str
    private: Path
    passphrase: str

    @property
    def public(self) -> Path:
        return self.private.with_suffix(".pub")

    @property
    def public_line(self) -> str:
        return self.public.read_text().strip()


def ssh_keygen(directory: Path, name: str, *args: str, passphrase: str = "") -> Path:
    path = directory / name
    subprocess.run(
        ["ssh-keygen", "-q", *args, "-N", passphrase, "-C", name, "-f", str(path)], check=True
    )
    return path


KINDS = {
    "ed25519": ("-t", "ed25519"),
    "rsa3072": ("-t", "rsa", "-b", "3072"),
}


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sshkeys")


@pytest.fixture(scope="module")
def keys(keydir: Path) -> dict[str, SSHKey]:
    """ed25519 and rsa-3072 keys, each plain and passphrase-protected."""
    made = {}
    for kind, args in KINDS.items():
        for protected in (False, True):
            name = f"{kind}{'-pw' if protected else ''}"
            phrase = PASSPHRASE if protected else ""
            made[name] = SSHKey(kind, ssh_keygen(keydir, name, *args, passphrase=phrase), phrase)
    return made


KEY_NAMES = ["ed25519", "ed25519-pw", "rsa3072", "rsa3072-pw"]


def on_tty(argv: list[str], answer: str) -> tuple[int, bytes]:
    """Run a program on a pseudo-terminal, typing `answer` when it asks for a passphrase."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: becomes argv, with the pty as its controlling terminal
        os.execvp(argv[0], argv)
    output, answered = b"", False
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], TTY_TIMEOUT)
            if not ready:
                os.kill(pid, signal.SIGKILL)
                raise AssertionError(f"{argv[0]} hung; output so far: {output!r}")
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            if not answered and b"passphrase" in output.lower():
                os.write(fd, answer.encode() + b"\n")
                answered = True
    finally:
        os.close(fd)
        _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def passfile_args(key: SSHKey, tmp_path: Path) -> list[object]:
    if not key.passphrase:
        return []
    passfile = tmp_path / "passfile"
    passfile.write_text(key.passphrase + "\n")
    return ["--passfile", passfile]


def go_age_decrypt(key: SSHKey, encrypted: Path, out: Path) -> bytes:
    argv = ["age", "-d", "-i", str(key.private), "-o", str(out), str(encrypted)]
    if key.passphrase:
        rc, output = on_tty(argv, key.passphrase)
        assert rc == 0, output
    else:
        subprocess.run(argv, check=True)
    return out.read_bytes()


@pytest.mark.parametrize("name", KEY_NAMES)
def test_go_age_encrypts_cagefs_decrypts(
    name: str, keys: dict[str, SSHKey], tmp_path: Path
) -> None:
    key = keys[name]
    (tmp_path / "plain").write_bytes(PLAINTEXT)
    encrypted = tmp_path / "file.age"
    subprocess.run(
        ["age", "-R", str(key.public), "-o", str(encrypted), str(tmp_path / "plain")], check=True
    )
    proc = cagefs("decrypt", "-i", key.private, *passfile_args(key, tmp_path), encrypted)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PLAINTEXT


@pytest.mark.parametrize("name", KEY_NAMES)
def test_cagefs_encrypts_go_age_decrypts(
    name: str, keys: dict[str, SSHKey], tmp_path: Path
) -> None:
    key = keys[name]
    encrypted = tmp_path / "file.age"
    proc = cagefs("encrypt", "-r", key.public_line, "-o", encrypted, stdin=PLAINTEXT)
    assert proc.returncode == 0, proc.stderr
    assert go_age_decrypt(key, encrypted, tmp_path / "out") == PLAINTEXT


@pytest.mark.parametrize("name", ["ed25519-pw", "rsa3072-pw"])
def test_cagefs_asks_ssh_passphrase_on_the_terminal(
    name: str, keys: dict[str, SSHKey], tmp_path: Path
) -> None:
    key = keys[name]
    encrypted, out = tmp_path / "file.age", tmp_path / "out"
    subprocess.run(["age", "-R", str(key.public), "-o", str(encrypted)], input=b"hi", check=True)
    argv = [sys.executable, "-m", "cagefs", "decrypt", "-i", str(key.private), "-o", str(out)]
    rc, output = on_tty([*argv, str(encrypted)], key.passphrase)
    assert rc == 0, output
    assert out.read_bytes() == b"hi"


def test_mixed_recipients_each_decrypt_alone(keys: dict[str, SSHKey], tmp_path: Path) -> None:
    """One file for an ed25519 key, an rsa key, an age key and two passphrase-protected ssh keys."""
    age_key = tmp_path / "age.key"
    subprocess.run(["age-keygen", "-o", str(age_key)], check=True, capture_output=True)
    age_recipient = subprocess.run(
        ["age-keygen", "-y", str(age_key)], check=True, capture_output=True, text=True
    ).stdout
    recipients = tmp_path / "recipients"
    lines = [keys[name].public_line for name in KEY_NAMES]
    recipients.write_text("# a mixed team\n" + "\n".join(lines) + "\n" + age_recipient)
    encrypted = tmp_path / "file.age"
    proc = cagefs("encrypt", "-R", recipients, "-o", encrypted, stdin=PLAINTEXT)
    assert proc.returncode == 0, proc.stderr
    stanza_types = [
        line.split()[1] for line in encrypted.read_bytes().split(b"\n") if line[:3] == b"-> "
    ]
    assert stanza_types == [b"ssh-ed25519", b"ssh-ed25519", b"ssh-rsa", b"ssh-rsa", b"X25519"]

    for name in KEY_NAMES:
        key = keys[name]
        assert go_age_decrypt(key, encrypted, tmp_path / f"out-{name}") == PLAINTEXT
        proc = cagefs("decrypt", "-i", key.private, *passfile_args(key, tmp_path), encrypted)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == PLAINTEXT
    proc = cagefs("decrypt", "-i", age_key, encrypted)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PLAINTEXT


def test_go_age_mixed_file_decrypts_with_each_key(keys: dict[str, SSHKey], tmp_path: Path) -> None:
    encrypted = tmp_path / "file.age"
    args = [a for name in KEY_NAMES for a in ("-R", str(keys[name].public))]
    subprocess.run(["age", *args, "-o", str(encrypted)], input=PLAINTEXT, check=True)
    for name in KEY_NAMES:
        key = keys[name]
        proc = cagefs("decrypt", "-i", key.private, *passfile_args(key, tmp_path), encrypted)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == PLAINTEXT


def test_passphrase_asked_only_when_a_file_needs_the_key(keys: dict[str, SSHKey]) -> None:
    asked: list[str] = []

    def passphrase() -> bytes:
        asked.append("asked")
        return PASSPHRASE.encode()

    key = keys["ed25519-pw"]
    [ssh_identity] = load_identity_file(key.private.read_bytes(), "key", passphrase)
    other = X25519Identity.generate()
    data = encrypt_bytes([other.recipient()], b"not for the ssh key")
    assert decrypt_bytes(data, [ssh_identity, other]) == b"not for the ssh key"
    assert asked == []
    data = encrypt_bytes([parse_recipient(key.public_line)], b"for the ssh key")
    assert decrypt_bytes(data, [ssh_identity]) == b"for the ssh key"
    assert decrypt_bytes(data, [ssh_identity]) == b"for the ssh key"
    assert asked == ["asked"]  # once per identity, then remembered


def test_identity_recipient_matches_public_key_file(keys: dict[str, SSHKey]) -> None:
    for key in keys.values():
        [identity] = load_identity_file(key.private.read_bytes())
        assert str(identity.recipient()) == " ".join(key.public_line.split()[:2])


@pytest.mark.parametrize("name", KEY_NAMES)
def test_keygen_y_prints_ssh_public_key_without_passphrase(
    name: str, keys: dict[str, SSHKey]
) -> None:
    key = keys[name]
    proc = cagefs("keygen", "-y", key.private)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().split() == key.public_line.split()[:2]


def test_wrong_passphrase_is_one_clear_line(keys: dict[str, SSHKey], tmp_path: Path) -> None:
    key = keys["ed25519-pw"]
    encrypted = tmp_path / "file.age"
    subprocess.run(["age", "-R", str(key.public), "-o", str(encrypted)], input=b"x", check=True)
    passfile = tmp_path / "wrong"
    passfile.write_text("not it\n")
    proc = cagefs("decrypt", "-i", key.private, "--passfile", passfile, encrypted)
    assert proc.returncode == 1
    assert proc.stderr.decode().count("\n") == 1
    assert "wrong passphrase" in proc.stderr.decode()


UNSUPPORTED_LINES = {
    line.split()[0]: line
    for line in [
        "ssh-dss AAAAB3NzaC1kc3MAAACBAP1/U4EddRIpUt9KnC7s5Of2EbdSPO9EAMMeP4C2USZpRV1AIlH7W",
        "sk-ssh-ed25519@openssh.com AAAAGnNrLXNzaC1lZDI1NTE5QG9wZW5zc2guY29t",
    ]
}


@pytest.mark.parametrize("key_type", sorted(UNSUPPORTED_LINES))
def test_unsupported_ssh_types_refused_by_cli(key_type: str) -> None:
    proc = cagefs("encrypt", "-r", UNSUPPORTED_LINES[key_type], stdin=b"x")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "Traceback" not in err
    assert key_type in err and "only ssh-ed25519 and ssh-rsa" in err


def test_ecdsa_key_refused_as_recipient_and_identity(keydir: Path) -> None:
    key = ssh_keygen(keydir, "ecdsa", "-t", "ecdsa")
    with pytest.raises(UnsupportedError, match="ecdsa-sha2-nistp256"):
        parse_recipient(key.with_suffix(".pub").read_text())
    with pytest.raises(UnsupportedError, match="ecdsa-sha2-nistp256"):
        load_identity_file(key.read_bytes())
    proc = cagefs("decrypt", "-i", key, stdin=b"")
    assert proc.returncode == 1
    assert proc.stderr.decode().count("\n") == 1
    assert "ecdsa-sha2-nistp256 keys cannot be used with age" in proc.stderr.decode()


def test_small_rsa_key_refused(keydir: Path, tmp_path: Path) -> None:
    key = ssh_keygen(keydir, "rsa1024", "-t", "rsa", "-b", "1024")
    line = key.with_suffix(".pub").read_text().strip()
    with pytest.raises(UnsupportedError, match="1024 bits is too small"):
        parse_recipient(line)
    proc = cagefs("encrypt", "-r", line, stdin=b"x")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "1024 bits is too small" in err
    recipients = tmp_path / "authorized_keys"
    recipients.write_text(line + "\n")
    proc = cagefs("encrypt", "-R", recipients, stdin=b"x")
    assert proc.returncode == 1
    assert "too small" in proc.stderr.decode() and "no recipients found" in proc.stderr.decode()


def test_github_keys_list_skips_unusable_ssh_keys(
    keys: dict[str, SSHKey], keydir: Path, tmp_path: Path
) -> None:
    """As age does: a `.keys` list with ecdsa and security keys still encrypts to the rest."""
    ecdsa = ssh_keygen(keydir, "ecdsa-list", "-t", "ecdsa").with_suffix(".pub").read_text()
    listing = tmp_path / "user.keys"
    sk_line = UNSUPPORTED_LINES["sk-ssh-ed25519@openssh.com"]
    listing.write_text(f"{ecdsa.strip()}\n{keys['ed25519'].public_line}\n{sk_line}\n")
    encrypted = tmp_path / "file.age"
    proc = cagefs("encrypt", "-R", listing, "-o", encrypted, stdin=PLAINTEXT)
    assert proc.returncode == 0, proc.stderr
    warnings = proc.stderr.decode().splitlines()
    assert len(warnings) == 2
    assert "line 1" in warnings[0] and "ecdsa-sha2-nistp256" in warnings[0]
    assert "line 3" in warnings[1] and "sk-ssh-ed25519@openssh.com" in warnings[1]
    assert go_age_decrypt(keys["ed25519"], encrypted, tmp_path / "out") == PLAINTEXT


def test_authorized_keys_style_file(keys: dict[str, SSHKey]) -> None:
    text = "\n".join(f"{keys[n].public_line}  trailing comment words" for n in KEY_NAMES)
    assert [str(r).split()[0] for r in parse_recipients_file(text)] == [
        "ssh-ed25519",
        "ssh-ed25519",
        "ssh-rsa",
        "ssh-rsa",
    ]


def test_malformed_public_keys_refused() -> None:
    with pytest.raises(KeyFormatError):
        parse_recipient("ssh-ed25519 not*base64")
    with pytest.raises(KeyFormatError):
        parse_recipient("ssh-ed25519")
    rsa_blob = "AAAAB3NzaC1yc2EAAAADAQABAAAAgQDf"  # an ssh-rsa blob under an ssh-ed25519 label
    with pytest.raises(KeyFormatError):
        parse_recipient(f"ssh-ed25519 {rsa_blob}")


def test_stanza_checks(keys: dict[str, SSHKey]) -> None:
    key = keys["ed25519"]
    [identity] = load_identity_file(key.private.read_bytes())
    [good] = parse_recipient(key.public_line).wrap(os.urandom(16))
    tag, share = good.args
    assert identity.unwrap([good]) is not None
    other_tag = Stanza("ssh-ed25519", ("AAAAAA", share), good.body)
    assert identity.unwrap([other_tag]) is None  # addressed to someone else: ignored
    for bad in [
        Stanza("ssh-ed25519", (tag,), good.body),
        Stanza("ssh-ed25519", (tag, share, "extra"), good.body),
        Stanza("ssh-ed25519", (tag, share[:-2]), good.body),
        Stanza("ssh-ed25519", (tag, share), good.body + b"x"),
        Stanza("ssh-ed25519", (tag, share), bytes(32)),  # our tag, but does not decrypt
    ]:
        with pytest.raises(HeaderError):
            identity.unwrap([bad])


def test_rsa_stanza_for_this_key_that_does_not_decrypt(keys: dict[str, SSHKey]) -> None:
    key = keys["rsa3072"]
    [identity] = load_identity_file(key.private.read_bytes())
    [good] = parse_recipient(key.public_line).wrap(os.urandom(16))
    assert identity.unwrap([good]) is not None
    with pytest.raises(HeaderError):
        identity.unwrap([Stanza("ssh-rsa", good.args, bytes(len(good.body)))])
    with pytest.raises(HeaderError):
        identity.unwrap([Stanza("ssh-rsa", (*good.args, "extra"), good.body)])
