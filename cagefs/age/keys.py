"""Recipients and identities from text: single keys, recipient files and identity files,
in the formats age and age-keygen use (one key per line, `#` comments, blank lines).
"""

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from cagefs.age import ssh
from cagefs.age.errors import KeyFormatError, UnsupportedError
from cagefs.age.pq import HybridIdentity, HybridRecipient
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.x25519 import X25519Identity, X25519Recipient

log = logging.getLogger(__name__)

# Prefix -> parser. Longer prefixes are tried first, so more specific key types can share a stem.
# The ssh parser takes every ssh-looking key, to refuse the types age cannot use by name.
_SSH_PREFIXES = ("ssh-", "ecdsa-", "sk-")
RECIPIENT_PARSERS: dict[str, Callable[[str], Recipient]] = {
    "age1": X25519Recipient.parse,
    "age1pq1": HybridRecipient.parse,
    **dict.fromkeys(_SSH_PREFIXES, ssh.parse_recipient),
}
IDENTITY_PARSERS: dict[str, Callable[[str], Identity]] = {
    "AGE-SECRET-KEY-1": X25519Identity.parse,
    "AGE-SECRET-KEY-PQ-1": HybridIdentity.parse,
}
_RECIPIENT_KINDS = "age1..., age1pq1..., ssh-ed25519 or ssh-rsa"
_IDENTITY_KINDS = "AGE-SECRET-KEY-1..., AGE-SECRET-KEY-PQ-1... or an OpenSSH private key file"
_PEM_BEGIN = b"-----BEGIN "


def _dispatch(text: str, parsers: dict, what: str, plugin_prefix: str, kinds: str):
    for prefix in sorted(parsers, key=len, reverse=True):
        if text.startswith(prefix):
            return parsers[prefix](text)
    if text.startswith(plugin_prefix):
        raise UnsupportedError(f"age plugins are not supported ({what} {text.split('1')[0]}1...)")
    raise KeyFormatError(f"unrecognized {what} (expected {kinds})")


def parse_recipient(text: str) -> Recipient:
    return _dispatch(text.strip(), RECIPIENT_PARSERS, "recipient", "age1", _RECIPIENT_KINDS)


def parse_identity(text: str) -> Identity:
    return _dispatch(text.strip(), IDENTITY_PARSERS, "identity", "AGE-PLUGIN-", _IDENTITY_KINDS)


def _key_lines(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def parse_recipients_file(text: str, name: str = "recipients file") -> list[Recipient]:
    """Recipients, one per line. Like age, ssh keys of types age cannot use are skipped with a
    warning: a GitHub `.keys` list often has ecdsa or security-key entries beside usable ones.
    """
    found = []
    for number, line in _key_lines(text):
        try:
            found.append(parse_recipient(line))
        except UnsupportedError as exc:
            if not line.startswith(_SSH_PREFIXES):
                raise KeyFormatError(f"{name}: {exc}") from None
            log.warning("warning: %s, line %d: skipped: %s", name, number, exc)
        except KeyFormatError as exc:
            raise KeyFormatError(f"{name}: {exc}") from None
    if not found:
        raise KeyFormatError(f"{name}: no recipients found")
    return found


def parse_identity_file(text: str, name: str = "identity file") -> list[Identity]:
    identities = []
    for number, line in _key_lines(text):
        try:
            identities.append(parse_identity(line))
        except (KeyFormatError, UnsupportedError) as exc:
            # Never echo the line: it may be a secret key with a typo.
            raise KeyFormatError(f"{name}, line {number}: {exc}") from None
    if not identities:
        raise KeyFormatError(f"{name}: no identities found")
    return identities


def load_identity_file(
    data: bytes, name: str = "identity file", passphrase: ssh.PassphraseSource | None = None
) -> list[Identity]:
    """The identities in a file: an OpenSSH private key (whose passphrase, if it has one, is
    asked through `passphrase` only when a file needs that key) or age identity lines.
    """
    if ssh.OPENSSH_PRIVATE_KEY_BEGIN in data:
        return [ssh.parse_identity(data, passphrase, name)]
    if data.lstrip().startswith(_PEM_BEGIN):
        raise UnsupportedError(
            f"{name}: only OpenSSH-format private keys are supported "
            "(convert with: ssh-keygen -p -f KEYFILE)"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError(f"{name}: not an identity file") from None
    return parse_identity_file(text, name)


def identity_file_text(identity: Identity) -> str:
    """An identity file in age-keygen's layout."""
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    return f"# created: {created}\n# public key: {identity.recipient()}\n{identity}\n"
