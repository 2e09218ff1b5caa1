"""Entry point: dispatch to a verb, and turn every expected failure into one line on stderr."""

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from cagefs import __version__
from cagefs.age.errors import AgeError, NoIdentityMatchError
from cagefs.cli import crypt, init, keygen, mount, umount
from cagefs.errors import CageError, ExitCode

VERBS = [keygen, init, crypt, mount, umount]


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other refusal (the verbs' parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="cagefs", description="A transparent filesystem that keeps every file as an age file."
    )
    parser.add_argument("--version", action="version", version=f"cagefs {__version__}")
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or ExitCode.OK
    except (AgeError, CageError, OSError) as exc:
        print(f"cagefs {args.verb}: {describe(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"cagefs {args.verb}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, CageError):
        return exc.exit_code
    if isinstance(exc, NoIdentityMatchError):  # decrypt: none of the keys given fits the file
        return ExitCode.BAD_KEY
    return ExitCode.FAILURE


def describe(exc: BaseException) -> str:
    """One line for a user; OSErrors name the file and the reason, not a traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
