"""Errors outside the age engine (store, mount, CLI). The message is one line for a user."""


class CageError(Exception):
    """A failure with a message fit to print as it is: no key material, no plaintext."""
