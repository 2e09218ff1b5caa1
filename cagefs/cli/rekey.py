"""`cagefs rekey STORE`: a fresh file key for every file, and a new authentication key.

After it, no key that was removed from the store (and no copy of an old file key or of the old
authentication key) reads or writes anything in it. Also the place where every key verb
carries out its key change (store/keychange.py): under the store lock, resumable, with
progress, and finishing a change a crash interrupted before anything else.
"""

import argparse
import contextlib
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from cagefs.cli.keyargs import add_identity_arguments
from cagefs.errors import ExitCode

if TYPE_CHECKING:
    from cagefs.store import Store
    from cagefs.store.keychange import Plan


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "rekey",
        help="encrypt every file again under a fresh key, and rotate the authentication key",
        description="Give every file of STORE a fresh file key (full re-encryption, one file "
        "at a time, atomically) and the store a new authentication key. Not while mounted. "
        "Run it again after an interruption: it finishes.",
    )
    parser.add_argument("store", metavar="STORE", type=Path)
    add_identity_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cagefs.store.keychange import Action, Plan

    with open_for_change(args, "rekey") as (store, pending):
        if pending is not None:
            status = carry_out(store, pending, "rekey", resumed=True)
            if pending.action is Action.REKEY:
                return status
        plan = Plan(tuple(store.config.recipients), Action.REKEY, rotate_auth=True)
        return carry_out(store, plan, "rekey")


@contextlib.contextmanager
def open_for_change(args: argparse.Namespace, verb: str) -> "Iterator[tuple[Store, Plan | None]]":
    """The store, locked (refused at once while mounted) and unlocked, and the unfinished key
    change it holds, if any."""
    from cagefs.cli.keyargs import load_identities
    from cagefs.store import check_store, unlock_store
    from cagefs.store.keychange import Plan
    from cagefs.store.lock import lock_store

    check_store(args.store)
    with lock_store(args.store, verb):
        identities = load_identities(args.identity, args.passfile)
        store = unlock_store(args.store, identities, args.passfile)
        plan = Plan.load(store.root)
        fold_journal(store, plan is None)
        yield store, plan


def fold_journal(store: "Store", fold: bool) -> None:
    """What an interrupted run left, now that no daemon owns it (`links.recover`), and if
    `fold`, changes still in journal records are folded into their files: a key change gives
    every file a new version, which would leave the records naming an old one."""
    from cagefs.store import links
    from cagefs.store.journal import pending_records, recover_store
    from cagefs.store.keyring import load_auth_key

    if not fold or not pending_records(store.root):
        links.recover(store.root)
        return
    store.auth = load_auth_key(store.root, store.identities)
    try:
        recover_store(store, writable=True)
    finally:
        store.auth = None


def carry_out(store: "Store", plan: "Plan", verb: str, resumed: bool = False) -> int:
    """Run `plan` (started now unless `resumed`) with progress; list the files left as they
    were; ExitCode.DAMAGE if any."""
    from cagefs.cli.progress import Progress
    from cagefs.store.keychange import begin, check_target, run
    from cagefs.store.verify import backing_files

    if resumed:
        print(
            f"cagefs {verb}: finishing an interrupted key change of {store.root}", file=sys.stderr
        )
    else:
        check_target(plan.recipients, store.identities)
        begin(store.root, plan)
    sizes = [(store.root / relative).lstat().st_size for relative in backing_files(store.root)]
    progress = Progress(verb, len(sizes), sum(sizes))

    def save_config(recipients: list[str]) -> None:
        store.config = replace(store.config, recipients=recipients)
        store.config.save(store.root)

    problems = 0
    try:
        for relative, problem in run(store.root, plan, store.identities, save_config, progress):
            problems += 1
            progress.note(f"{relative}: {problem}")
    finally:
        progress.close()
    print(
        f"cagefs {verb}: {progress.done_files} files done, {problems} left as they were; "
        f"{len(plan.recipients)} recipient(s)",
        file=sys.stderr,
    )
    return ExitCode.DAMAGE if problems else 0
