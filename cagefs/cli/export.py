"""`cagefs export STORE DEST`: decrypt a whole store into a new plain directory, no mount.

Files that fail authentication or carry no valid proof of origin are listed and not written
(exactly what a mount would refuse to serve); modes, owners, times and symlinks are kept. It
only reads the store, so it needs no lock.
"""

import argparse
import os
import sys
from pathlib import Path

from cagefs.cli.keyargs import add_identity_arguments, open_store_from
from cagefs.errors import CageError, ExitCode


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="decrypt a store into a plain directory, without a mount",
        description="Decrypt every file of STORE into DEST (new, or an empty directory).",
    )
    parser.add_argument("store", metavar="STORE", type=Path)
    parser.add_argument("dest", metavar="DEST", type=Path)
    add_identity_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cagefs.cli.progress import Progress
    from cagefs.store import check_store
    from cagefs.store.auth import FileAuth
    from cagefs.store.journal import pending_records
    from cagefs.store.transfer import export_tree
    from cagefs.store.verify import backing_files

    check_store(args.store)
    if os.path.lexists(args.dest) and (not args.dest.is_dir() or any(args.dest.iterdir())):
        raise CageError(f"{args.dest} exists and is not an empty directory")
    store = open_store_from(args)
    if pending_records(store.root):
        print(
            f"cagefs export: {args.store} holds change-journal records (a mount is running, or "
            f"one stopped uncleanly): files are exported as of their last fold; run `cagefs "
            f"compact {args.store}` first for the latest fsync'ed content",
            file=sys.stderr,
        )
    args.dest.mkdir(mode=0o700, exist_ok=True)
    files = [(store.root / relative).lstat().st_size for relative in backing_files(store.root)]
    progress = Progress("export", _entries(store.root), sum(files))
    problems = exported = 0
    try:
        for outcome in export_tree(store.root, args.dest, store.identities, FileAuth(store.auth)):
            if outcome.problem:
                problems += 1
                progress.note(f"{outcome.path}: {outcome.problem}")
            else:
                exported += 1
            progress(outcome.path, outcome.size)
    finally:
        progress.close()
    print(f"cagefs export: {exported} entries exported, {problems} not", file=sys.stderr)
    return ExitCode.DAMAGE if problems else 0


def _entries(root: Path) -> int:
    """Entries under the store root but `.cagefs/`, for the progress line."""
    from cagefs.store.layout import META_DIR

    count = 0
    for directory, dirnames, filenames in os.walk(root):
        if directory == str(root):
            dirnames[:] = [name for name in dirnames if name != META_DIR]
        count += len(dirnames) + len(filenames)
    return count
