"""Recipients and identities from text: single keys, recipient files and identity files,
in the formats age and age-keygen use (one key per line, `#` comments, blank lines).
"""

from collections.abc import Callable
from datetime import UTC, datetime

from cagefs.age.errors import KeyFormatError, UnsupportedError
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.x25519 import X25519Identity, X25519Recipient

# Prefix -> parser. Longer prefixes are tried first, so more specific key types can share a stem.
RECIPIENT_PARSERS: dict[str, Callable[[str], Recipient]] = {"age1": X25519Recipient.parse}
IDENTITY_PARSERS: dict[str, Callable[[str], Identity]] = {
    "AGE-SECRET-KEY-1": X25519Identity.parse,
}


def _dispatch(text: str, parsers: dict, what: str, plugin_prefix: str):
    for prefix in sorted(parsers, key=len, reverse=True):
        if text.startswith(prefix):
            return parsers[prefix](text)
    if text.startswith(plugin_prefix):
        raise UnsupportedError(f"age plugins are not supported ({what} {text.split('1')[0]}1...)")
    raise KeyFormatError(f"unrecognized {what} (expected one of: {', '.join(parsers)})")


def parse_recipient(text: str) -> Recipient:
    return _dispatch(text.strip(), RECIPIENT_PARSERS, "recipient", "age1")


def parse_identity(text: str) -> Identity:
    return _dispatch(text.strip(), IDENTITY_PARSERS, "identity", "AGE-PLUGIN-")


def _key_lines(text: str) -> list[tuple[int, str]]:
    return [
        (number, line.strip())
        for number, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]


def parse_recipients_file(text: str, name: str = "recipients file") -> list[Recipient]:
    try:
        found = [parse_recipient(line) for _, line in _key_lines(text)]
    except (KeyFormatError, UnsupportedError) as exc:
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


def identity_file_text(identity: X25519Identity) -> str:
    """An identity file in age-keygen's layout."""
    created = datetime.now(UTC).replace(microsecond=0).isoformat()
    return f"# created: {created}\n# public key: {identity.recipient()}\n{identity}\n"
