"""`cagefs recipients list|add|remove STORE ...`: who can read the store.

- `list` prints config.toml's recipients, one per line (no secret needed).
- `add` gives every file (and the canary and auth.age) a new header that also wraps its file
  key for the new recipients; payloads are copied unchanged, so it runs at disk speed.
- `export-auth-key` writes the store's authentication key to a new file, for an
  `--encrypt-only` mount (write, not read).
- `remove` takes recipients out, rotates the authentication key (they knew it) and, unless
  `--no-rekey`, gives every file a fresh file key (`cagefs rekey`): afterwards nothing in the
  store opens with a removed key.
All under the store lock (refused while mounted), resumable: run the same command again.
"""

import argparse
import sys
from pathlib import Path

from cagefs.cli.keyargs import add_identity_arguments, open_store_from
from cagefs.cli.rekey import carry_out, open_for_change
from cagefs.errors import CageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "recipients",
        help="list, add or remove the recipients of a store",
        description="List, add or remove who can read a store. add and remove rewrite every "
        "file's header (remove also re-encrypts every file unless --no-rekey); run the same "
        "command again after an interruption. Not while the store is mounted.",
    )
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="print the recipients, one per line")
    listing.add_argument("store", metavar="STORE", type=Path)
    listing.set_defaults(run=run_list)
    for name, run, what in (
        ("add", run_add, "also encrypt every file to these recipients"),
        ("remove", run_remove, "stop encrypting to these recipients, and rekey"),
    ):
        action = actions.add_parser(name, help=what, description=what)
        action.add_argument("store", metavar="STORE", type=Path)
        action.add_argument(
            "recipient", nargs="*", metavar="RECIPIENT", help="age1..., age1pq1..., ssh-..."
        )
        action.add_argument(
            "-R",
            "--recipients-file",
            action="append",
            default=[],
            metavar="FILE",
            help="the recipients listed in FILE",
        )
        add_identity_arguments(action)
        action.set_defaults(run=run)
    export = actions.add_parser(
        "export-auth-key",
        help="write the store's authentication key to a file, for an --encrypt-only mount",
        description="Write the store's authentication key (a secret: whoever has it can write "
        "files the store accepts, but not read any) to FILE, created with mode 600.",
    )
    export.add_argument("store", metavar="STORE", type=Path)
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="a new file")
    add_identity_arguments(export)
    export.set_defaults(run=run_export)
    remove = actions.choices["remove"]
    remove.add_argument(
        "--no-rekey",
        action="store_true",
        help="only rewrap headers and rotate the authentication key, keep file keys: a removed "
        "recipient who kept a copy of a file or its key can still read that version",
    )


def run_list(args: argparse.Namespace) -> int:
    from cagefs.store import check_store
    from cagefs.store.config import StoreConfig
    from cagefs.store.keychange import Plan

    check_store(args.store)
    for text in StoreConfig.load(args.store).recipients:
        print(text)
    if Plan.load(args.store) is not None:
        print(f"cagefs recipients: a key change of {args.store} is unfinished", file=sys.stderr)
    return 0


def _given(args: argparse.Namespace) -> list[str]:
    from cagefs.cli.keyargs import load_recipients
    from cagefs.store.keychange import canonical

    recipients = load_recipients(args.recipient, args.recipients_file)
    if not recipients:
        raise CageError("no recipient given (RECIPIENT or -R FILE)")
    return canonical([str(r) for r in recipients])


def run_add(args: argparse.Namespace) -> int:
    from cagefs.store.keychange import Action, Plan, canonical

    given = _given(args)
    with open_for_change(args, "recipients add") as (store, pending):
        status = carry_out(store, pending, "recipients", resumed=True) if pending else 0
        current = canonical(store.config.recipients)
        new = [text for text in given if text not in current]
        if not new:
            if pending is None:
                raise CageError(f"already a recipient of {store.root}: {given[0]}")
            return status
        plan = Plan(tuple(current + new), Action.REWRAP, rotate_auth=False)
        return carry_out(store, plan, "recipients") or status


def run_remove(args: argparse.Namespace) -> int:
    from cagefs.store.keychange import Action, Plan, canonical

    given = _given(args)
    with open_for_change(args, "recipients remove") as (store, pending):
        status = carry_out(store, pending, "recipients", resumed=True) if pending else 0
        current = canonical(store.config.recipients)
        gone = [text for text in given if text in current]
        if len(gone) < len(given) and pending is None:
            missing = next(text for text in given if text not in current)
            raise CageError(f"not a recipient of {store.root}: {missing}")
        if not gone:
            return status
        action = Action.REWRAP if args.no_rekey else Action.REKEY
        plan = Plan(tuple(t for t in current if t not in gone), action, rotate_auth=True)
        return carry_out(store, plan, "recipients") or status


def run_export(args: argparse.Namespace) -> int:
    import os


    store = open_store_from(args)
    assert store.auth is not None
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(args.output, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(store.auth.text())
    print(
        f"cagefs recipients: wrote the authentication key of {args.store} to {args.output}; "
        "it lets its holder write (not read) the store: `cagefs rekey` or removing a recipient "
        "replaces it",
        file=sys.stderr,
    )
    return 0
