"""`cagefs init STORE`: make an empty directory into a store that a mount can unlock."""

import argparse
import sys
from pathlib import Path

from cagefs.errors import CageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "init",
        help="create a store",
        description="Create a store. Without --identity, a new identity is generated and kept "
        "in STORE/.cagefs/identity.age, encrypted to a passphrase.",
    )
    parser.add_argument("store", metavar="STORE", type=Path)
    parser.add_argument(
        "-r", "--recipient", action="append", default=[], help="also encrypt to this recipient"
    )
    parser.add_argument(
        "-R",
        "--recipients-file",
        action="append",
        default=[],
        metavar="FILE",
        help="also encrypt to the recipients listed in FILE",
    )
    parser.add_argument(
        "--identity",
        metavar="FILE",
        help="use the identity in FILE (kept where it is) instead of generating one",
    )
    parser.add_argument(
        "--passfile", metavar="FILE", help="read the new passphrase from the first line of FILE"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    # Imported here, not at the top: other verbs should not pay for the store at start-up.
    from cagefs.cli.keyargs import load_identities, load_recipients
    from cagefs.secrets import get_passphrase, prompt_passphrase
    from cagefs.store import check_can_init, init_store

    recipients = load_recipients(args.recipient, args.recipients_file)
    check_can_init(args.store)  # before asking a passphrase that would be wasted
    if args.identity:
        if args.passfile:
            raise CageError("--passfile protects a generated identity: not used with --identity")
        identities = load_identities([args.identity], None)
        store = init_store(args.store, recipients, identities)
    else:
        passphrase = get_passphrase(
            args.passfile, prompt_passphrase, "New passphrase for the store: ", confirm=True
        )
        store = init_store(args.store, recipients, passphrase=passphrase)
    print(f"cagefs: created store {store.root} for:", file=sys.stderr)
    for text in store.config.recipients:
        print(f"  {text}", file=sys.stderr)
    return 0
