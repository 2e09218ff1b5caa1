"""Entry point: dispatch to a verb, and turn every expected failure into one line on stderr."""

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from cagefs.age.errors import AgeError, NoIdentityMatchError
from cagefs.cli.mountopts import helper_argv, looks_like_helper_call
from cagefs.errors import CageError, ExitCode, UsageError

# Each verb and the module in cagefs.cli that runs it, in the order of the help. A command
# imports only its verb's module (all of them, for help or a mistyped verb): importing them all
# took 0.1-0.15 s, a tenth of `cagefs decrypt` of 1 GiB.
VERBS = {
    "keygen": "keygen",
    "init": "init",
    "encrypt": "crypt",
    "decrypt": "crypt",
    "mount": "mount",
    "umount": "umount",
    "status": "status",
    "verify": "verify",
    "compact": "compact",
    "recipients": "recipients",
    "rekey": "rekey",
    "passwd": "passwd",
    "import": "import_",
    "export": "export",
}


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other refusal (the verbs' parsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(ExitCode.USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


class _Version(argparse.Action):
    """`--version`, which looks the version up only when asked (importlib.metadata is slow)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        help_text = "show program's version number and exit"
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help_text)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> NoReturn:
        from cagefs import __version__

        print(f"cagefs {__version__}")
        parser.exit()


def build_parser(verb: str | None = None) -> argparse.ArgumentParser:
    """The parser of every verb, or only of `verb`."""
    parser = OneLineParser(
        prog="cagefs", description="A transparent filesystem that keeps every file as an age file."
    )
    parser.add_argument("--version", action=_Version)
    subparsers = parser.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    for module in dict.fromkeys(VERBS.values()) if verb is None else [VERBS[verb]]:
        importlib.import_module(f"cagefs.cli.{module}").add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    program = os.path.basename(sys.argv[0]) if argv is None else "cagefs"
    if program.startswith("mount.") or looks_like_helper_call(words, list(VERBS)):
        try:  # called by mount(8) or mount.fuse3, for fstab and `mount -t fuse.cagefs`
            mount_words = helper_argv(program, words)
        except UsageError as exc:
            print(f"{program}: {exc}", file=sys.stderr)
            return exc.exit_code
        if mount_words is None:
            return ExitCode.OK
        words = mount_words
    args = build_parser(words[0] if words and words[0] in VERBS else None).parse_args(words)
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
