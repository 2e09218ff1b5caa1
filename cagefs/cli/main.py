"""Entry point: dispatch to a verb, and turn every expected failure into one line on stderr."""

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from cagefs.age.errors import AgeError
from cagefs.cli import (
    crypt,
    export,
    import_,
    init,
    keygen,
    mount,
    passwd,
    recipients,
    rekey,
    umount,
    verify,
)
from cagefs.errors import CageError

VERBS = [keygen, init, crypt, mount, umount, verify, recipients, rekey, passwd, import_, export]


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other refusal (the verbs' parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="cagefs", description="A transparent filesystem that keeps every file as an age file."
    )
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for verb in VERBS:
        verb.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (AgeError, CageError, OSError) as exc:
        print(f"cagefs {args.verb}: {describe(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cagefs {args.verb}: interrupted", file=sys.stderr)
        return 130


def describe(exc: BaseException) -> str:
    """One line for a user; OSErrors name the file and the reason, not a traceback."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
