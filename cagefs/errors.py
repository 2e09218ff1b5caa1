"""Errors outside the age engine (store, mount, CLI), and the exit code each one ends `cagefs`
with. The message is one line for a user; the code is for scripts and service managers (the
systemd unit does not restart on a wrong key: RestartPreventExitStatus)."""

from enum import IntEnum


class ExitCode(IntEnum):
    """Every exit status of `cagefs`; README "Exit codes" lists the same."""

    OK = 0
    FAILURE = 1  # anything not listed below (an I/O error, a damaged file...)
    USAGE = 2  # a bad flag, option or setting value (argparse's own code)
    BAD_KEY = 3  # wrong passphrase, or an identity that cannot read the store or file
    NO_STORE = 4  # the store is missing or is not a cagefs store
    STORE_BUSY = 5  # the store is in use: mounted by another daemon, or being written
    MOUNTPOINT = 6  # the mount point is missing, busy, not an empty directory, in the store
    NO_FUSE = 7  # FUSE is unavailable: no /dev/fuse, no pyfuse3, the kernel refused the mount
    DAMAGE = 8  # damage found in a store (verify)
    INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT


class CageError(Exception):
    """A failure with a message fit to print as it is: no key material, no plaintext."""

    exit_code: int = ExitCode.FAILURE


class UsageError(CageError):
    exit_code = ExitCode.USAGE


class WrongKeyError(CageError):
    exit_code = ExitCode.BAD_KEY


class NotAStoreError(CageError):
    exit_code = ExitCode.NO_STORE


class MountPointError(CageError):
    exit_code = ExitCode.MOUNTPOINT


class FuseUnavailableError(CageError):
    exit_code = ExitCode.NO_FUSE
