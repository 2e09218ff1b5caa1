"""`cagefs import SRC STORE`: encrypt a plain tree into a store without mounting it.

The store's authentication key is needed to write files the store accepts: it comes from the
store's identity (-i / --passfile, as for mount) or, for a machine that must not read the
store, from `--auth-key-file` (`cagefs recipients export-auth-key`). `--remove-source` deletes
each source file only once its stored copy has been read back from the store and compared.
"""

import argparse
import contextlib
import os
import sys
from pathlib import Path

from cagefs.cli.keyargs import add_identity_arguments, open_store_from
from cagefs.errors import CageError, ExitCode


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import",
        help="encrypt a directory (or file) into a store, without a mount",
        description="Encrypt SRC's contents (or the file SRC) into STORE, keeping modes, "
        "owners, times and symlinks. Not while the store is mounted.",
    )
    parser.add_argument("source", metavar="SRC", type=Path)
    parser.add_argument("store", metavar="STORE", type=Path)
    add_identity_arguments(parser)
    parser.add_argument(
        "--auth-key-file",
        metavar="FILE",
        help="write with this authentication key instead of unlocking the store (no identity)",
    )
    parser.add_argument(
        "--remove-source",
        action="store_true",
        help="delete each source file once its stored copy is read back and compared",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cagefs.cli.progress import Progress
    from cagefs.store import check_store
    from cagefs.store.links import recover
    from cagefs.store.lock import lock_store
    from cagefs.store.transfer import import_tree

    if not os.path.lexists(args.source):
        raise CageError(f"{args.source}: no such file or directory")
    if args.auth_key_file and (args.identity or args.passfile):
        raise CageError("--auth-key-file takes no identity or passphrase (-i, --passfile)")
    check_store(args.store)
    with lock_store(args.store, "import"):
        store = open_store_from(args)  # with --auth-key-file: encrypt-only
        assert store.auth is not None
        recover(store.root)
        files, size = _count(args.source)
        progress = Progress("import", files, size)
        problems = 0
        try:
            for outcome in import_tree(
                args.source, store.root, store.recipients, store.auth, args.remove_source
            ):
                progress(outcome.path, outcome.size)
                if outcome.problem:
                    problems += 1
                    progress.note(f"{outcome.path}: {outcome.problem}")
        finally:
            progress.close()
    print(
        f"cagefs import: {progress.done_files - problems} entries imported, {problems} not",
        file=sys.stderr,
    )
    return ExitCode.DAMAGE if problems else 0


def _count(source: Path) -> tuple[int, int]:
    """Entries and bytes of regular files under `source`, for the progress line."""
    if not source.is_dir() or source.is_symlink():
        return 1, source.lstat().st_size
    entries = size = 0
    for directory, dirnames, filenames in os.walk(source):
        entries += len(dirnames) + len(filenames)
        for name in filenames:
            with contextlib.suppress(OSError):
                size += os.lstat(os.path.join(directory, name)).st_size
    return entries, size
