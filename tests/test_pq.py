"""Post-quantum hybrid (mlkem768x25519) keys: the spec's example key, round trips through the
engine and the CLI, the stanza checks the spec lists, the no-mixing rule, and that neither half
of the hybrid key alone opens a file.

(The hybrid conformance vectors run in test_vectors.py with every other vector.)
"""

import os
from pathlib import Path

import pytest
from support import cagefs, decrypt_bytes, encrypt_bytes

from cagefs.age.encoding import b64decode, b64encode, bech32_decode
from cagefs.age.errors import AgeError, HeaderError, KeyFormatError, NoIdentityMatchError
from cagefs.age.header import Stanza
from cagefs.age.keys import load_identity_file, parse_identity, parse_recipient
from cagefs.age.pq import ENC_SIZE, HybridIdentity, HybridRecipient, expand_seed
from cagefs.age.recipients import wrap_file_key
from cagefs.age.x25519 import X25519Identity

# The example key pair of C2SP age.md, "The MLKEM768-X25519 hybrid post-quantum recipient type".
SPEC_IDENTITY = "AGE-SECRET-KEY-PQ-1XX76JRALNLXDMEW0CRK45QMCCH4X06SE84UN3VPM33W6HWDX0H3SK3ZQFR"
SPEC_RECIPIENT_START = "age1pq1x34nzsvr0rxjsgdn8zgyhfe8j7ceq5r9rdelkjuh3y235jzxshfg87pzf5zr"
SPEC_RECIPIENT_END = "zk3tlhl53k2ykx3qheyty7saeq0d3fzv49zc0k"
SPEC_RECIPIENT_LENGTH = 1959
PLAINTEXT = os.urandom(2 * 65536 + 7)


def test_spec_example_key_pair() -> None:
    identity = parse_identity(SPEC_IDENTITY)
    recipient = str(identity.recipient())
    assert recipient.startswith(SPEC_RECIPIENT_START)
    assert recipient.endswith(SPEC_RECIPIENT_END)
    assert len(recipient) == SPEC_RECIPIENT_LENGTH
    assert str(identity) == SPEC_IDENTITY
    assert str(parse_recipient(recipient)) == recipient


def test_engine_round_trip_and_stanza_shape() -> None:
    identity = HybridIdentity.generate()
    data = encrypt_bytes([identity.recipient()], PLAINTEXT)
    stanza_line = data.split(b"\n")[1].split(b" ")
    assert stanza_line[1] == b"mlkem768x25519" and len(stanza_line) == 3
    assert len(b64decode(stanza_line[2])) == ENC_SIZE
    assert decrypt_bytes(data, [identity]) == PLAINTEXT
    assert decrypt_bytes(data, [X25519Identity.generate(), identity]) == PLAINTEXT


def test_several_hybrid_recipients_each_decrypt_alone() -> None:
    identities = [HybridIdentity.generate() for _ in range(3)]
    data = encrypt_bytes([i.recipient() for i in identities], PLAINTEXT)
    for identity in identities:
        assert decrypt_bytes(data, [identity]) == PLAINTEXT
    with pytest.raises(NoIdentityMatchError):
        decrypt_bytes(data, [HybridIdentity.generate()])


def test_x25519_half_alone_cannot_open() -> None:
    """The X25519 part of a hybrid key, as an ordinary age key, does not open the file; nor
    does a hybrid key whose ML-KEM half is someone else's."""
    identity = HybridIdentity.generate()
    data = encrypt_bytes([identity.recipient()], PLAINTEXT)
    kem_half, dh_half = expand_seed(str_seed(identity))
    with pytest.raises(NoIdentityMatchError):
        decrypt_bytes(data, [X25519Identity(dh_half)])
    other_kem, _ = expand_seed(os.urandom(32))
    with pytest.raises(NoIdentityMatchError):
        decrypt_bytes(data, [HybridIdentity(other_kem, dh_half)])
    assert decrypt_bytes(data, [HybridIdentity(kem_half, dh_half)]) == PLAINTEXT


def str_seed(identity: HybridIdentity) -> bytes:
    return bech32_decode(str(identity))[1]


def test_mixing_with_classic_recipients_refused() -> None:
    hybrid = HybridIdentity.generate().recipient()
    classic = X25519Identity.generate().recipient()
    with pytest.raises(AgeError, match="post-quantum"):
        wrap_file_key(os.urandom(16), [hybrid, classic])
    proc = cagefs("encrypt", "-r", str(hybrid), "-r", str(classic), stdin=b"x")
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert err.count("\n") == 1 and "post-quantum" in err


def good_stanza() -> tuple[HybridIdentity, Stanza]:
    identity = HybridIdentity.generate()
    [stanza] = identity.recipient().wrap(os.urandom(16))
    return identity, stanza


def test_stanza_checks_from_the_spec() -> None:
    identity, good = good_stanza()
    enc = b64decode(good.args[0])
    assert identity.unwrap([good]) is not None
    for bad in [
        Stanza("mlkem768x25519", (), good.body),
        Stanza("mlkem768x25519", (good.args[0], "extra"), good.body),
        Stanza("mlkem768x25519", (b64encode(enc[:-1]),), good.body),
        Stanza("mlkem768x25519", (b64encode(enc + b"\0"),), good.body),
        Stanza("mlkem768x25519", (good.args[0] + "=",), good.body),
        Stanza("mlkem768x25519", (good.args[0][:-1] + "B",), good.body),  # stray low bits
        Stanza("mlkem768x25519", good.args, good.body + b"\0"),
        Stanza("mlkem768x25519", good.args, good.body[:-1]),
        Stanza("mlkem768x25519", (b64encode(enc[:-32] + bytes(32)),), good.body),  # zero share
    ]:
        with pytest.raises(HeaderError):
            identity.unwrap([bad])
    assert identity.unwrap([Stanza("X25519-like", good.args, good.body)]) is None


def test_malformed_keys_refused() -> None:
    recipient = str(HybridIdentity.generate().recipient())
    with pytest.raises(KeyFormatError):
        parse_recipient(recipient[:-1] + ("q" if recipient[-1] != "q" else "p"))
    with pytest.raises(KeyFormatError):
        HybridRecipient(bytes(100))
    with pytest.raises(KeyFormatError):
        parse_identity("AGE-SECRET-KEY-PQ-1QQQQ")


def test_cli_keygen_encrypt_decrypt(tmp_path: Path) -> None:
    key = tmp_path / "pq.key"
    proc = cagefs("keygen", "--pq", "-o", key)
    assert proc.returncode == 0, proc.stderr
    assert os.stat(key).st_mode & 0o777 == 0o600
    text = key.read_text()
    assert "\nAGE-SECRET-KEY-PQ-1" in text
    proc = cagefs("keygen", "-y", key)
    assert proc.returncode == 0, proc.stderr
    recipient = proc.stdout.decode().strip()
    assert recipient.startswith("age1pq1") and f"# public key: {recipient}\n" in text

    recipients = tmp_path / "recipients"
    recipients.write_text(recipient + "\n")
    encrypted = tmp_path / "file.age"
    proc = cagefs("encrypt", "-R", recipients, "-o", encrypted, stdin=PLAINTEXT)
    assert proc.returncode == 0, proc.stderr
    proc = cagefs("decrypt", "-i", key, encrypted)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PLAINTEXT
    [identity] = load_identity_file(key.read_bytes())
    assert decrypt_bytes(encrypted.read_bytes(), [identity]) == PLAINTEXT


def test_cli_armored_round_trip(tmp_path: Path) -> None:
    key = tmp_path / "pq.key"
    assert cagefs("keygen", "--pq", "-o", key).returncode == 0
    recipient = cagefs("keygen", "-y", key).stdout.decode().strip()
    proc = cagefs("encrypt", "-a", "-r", recipient, stdin=PLAINTEXT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    proc = cagefs("decrypt", "-i", key, stdin=proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == PLAINTEXT
