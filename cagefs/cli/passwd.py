"""`cagefs passwd STORE`: change the passphrase that protects the store's own identity.

Asks the old passphrase and the new one twice on the terminal, or reads them from
`--passfile OLD` and `--new-passfile NEW` (first line of each). identity.age is replaced
atomically: the old file stays until the new one is on disk. Like every verb that writes the
store, it takes the store lock, so it refuses a mounted store.
"""

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "passwd",
        help="change the store's passphrase",
        description="Change the passphrase protecting STORE/.cagefs/identity.age.",
    )
    parser.add_argument("store", metavar="STORE", type=Path)
    parser.add_argument(
        "--passfile", metavar="OLD", help="read the current passphrase from OLD's first line"
    )
    parser.add_argument(
        "--new-passfile", metavar="NEW", help="read the new passphrase from NEW's first line"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cagefs.secrets import get_passphrase, prompt_passphrase
    from cagefs.store import check_store
    from cagefs.store.keyring import identity_text, save_identity
    from cagefs.store.lock import lock_store

    check_store(args.store)
    with lock_store(args.store, "passwd"):
        prompt = f"Passphrase for store {args.store}: "
        old = get_passphrase(args.passfile, prompt_passphrase, prompt)
        text = identity_text(args.store, old)  # a wrong passphrase is refused before the new
        new = get_passphrase(args.new_passfile, prompt_passphrase, "New passphrase: ", True)
        save_identity(args.store, text, new)  # atomic: the old file stays until this is durable
    print(f"cagefs passwd: the passphrase of {args.store} is changed", file=sys.stderr)
    return 0
