"""Entry point: dispatch to a verb, and turn every expected failure into one line on stderr."""

import argparse
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from cagefs import __version__
from cagefs.age.errors import AgeError, NoIdentityMatchError
from cagefs.cli import (
    compact,
    crypt,
    export,
    import_,
    init,
    keygen,
    mount,
    passwd,
    recipients,
    rekey,
    status,
    umount,
    verify,
)
from cagefs.cli.mountopts import helper_argv, looks_like_helper_call
from cagefs.errors import CageError, ExitCode, UsageError

VERBS = [
    keygen,
    init,
    crypt,
    mount,
    umount,
    status,
    verify,
    compact,
    recipients,
    rekey,
    passwd,
    import_,
    export,
]


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
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    program = os.path.basename(sys.argv[0]) if argv is None else "cagefs"
    if program.startswith("mount.") or looks_like_helper_call(words, verb_names(parser)):
        try:  # called by mount(8) or mount.fuse3, for fstab and `mount -t fuse.cagefs`
            mount_words = helper_argv(program, words)
        except UsageError as exc:
            print(f"{program}: {exc}", file=sys.stderr)
            return exc.exit_code
        if mount_words is None:
            return ExitCode.OK
        words = mount_words
    args = parser.parse_args(words)
    try:
        return args.run(args) or ExitCode.OK
    except (AgeError, CageError, OSError) as exc:
        print(f"cagefs {args.verb}: {describe(exc)}", file=sys.stderr)
        return exit_code(exc)
    except KeyboardInterrupt:
        print(f"cagefs {args.verb}: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


def verb_names(parser: argparse.ArgumentParser) -> list[str]:
    return [
        name
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
        for name in action.choices
    ]


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
