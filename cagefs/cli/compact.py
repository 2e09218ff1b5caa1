"""`cagefs compact STORE`: fold every change-journal record into its file, offline.

Afterwards every backing file is current for stock tools (`age -d`), and `.cagefs/journal/` is
empty. A mount does the same at start; this is for people who want the files current without
mounting (a backup, a copy read with `age -d`). Takes the store lock: not while mounted.
"""

import argparse
import sys
from pathlib import Path

from cagefs.cli.keyargs import add_identity_arguments, open_store_from


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compact",
        help="fold change-journal records into their files (every file current for age -d)",
        description="Apply the records in STORE/.cagefs/journal/ to their files, each file "
        "published as a new complete version, then remove them; obsolete records are removed. "
        "A damaged record is named and kept, and nothing of its file is changed.",
    )
    parser.add_argument("store", metavar="STORE", type=Path)
    add_identity_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cagefs.store import check_store
    from cagefs.store.journal import clear_slots, recover_store
    from cagefs.store.lock import lock_store

    check_store(args.store)
    with lock_store(args.store, "compact"):
        store = open_store_from(args)
        done = recover_store(store, writable=True)  # a crashed mount's: nobody owns it now
        clear_slots(store.root)  # no records left: the free slots go too
    print(
        f"cagefs compact: {len(done.replayed)} file(s) brought up to date, "
        f"{done.dropped} obsolete record(s) removed",
        file=sys.stderr,
    )
    return 0
