"""The ways an age file can fail, one class per failure kind the spec names.

Every message is a single line that never contains key material or plaintext, so callers can
print `str(exc)` to a user or a log as it is.
"""


class AgeError(Exception):
    """Base of every error the age engine raises."""


class HeaderError(AgeError):
    """The header is malformed: bad version line, stanza, base64, or MAC line."""


class HMACError(AgeError):
    """The header parsed, but its MAC does not match the file key (tampered header)."""


class NoIdentityMatchError(AgeError):
    """None of the given identities can unwrap the file key."""


class PayloadError(AgeError):
    """The payload is truncated, extended, or fails authentication."""


class ArmorError(AgeError):
    """The ASCII armor around the file is malformed."""


class UnsupportedError(AgeError):
    """A well-formed key or stanza type this engine does not implement (plugins, ...)."""


class KeyFormatError(AgeError):
    """A recipient, identity or key file cannot be parsed."""
