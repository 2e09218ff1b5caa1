"""`cagefs verify STORE`: list every backing file that is damaged, untrusted or untagged.

Each line on stdout is `PATH: problem`, PATH the backing file relative to STORE. The exit status
is 0 when every file decrypts, authenticates and carries the store's proof of origin, and
EXIT_DAMAGE when anything was listed. `--upgrade` gives a store made before tamper evidence its
authentication key and tags its untagged files first (resumable: run it again after a crash).
"""

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

from cagefs.errors import ExitCode

EXIT_DAMAGE = ExitCode.DAMAGE


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check every file of a store (and tag an old store's files with --upgrade)",
        description="Decrypt and authenticate every backing file and check its proof of "
        f"origin; list each bad one as 'PATH: problem'. Exit status {EXIT_DAMAGE} if any.",
    )
    parser.add_argument("store", metavar="STORE", type=Path)
    parser.add_argument(
        "-i",
        "--identity",
        action="append",
        default=[],
        metavar="IDENTITY_FILE",
        help="unlock with this identity file instead of the store's passphrase",
    )
    parser.add_argument(
        "--passfile", metavar="FILE", help="read the passphrase from FILE's first line"
    )
    parser.add_argument(
        "--upgrade",
        action="store_true",
        help="give a store made before tamper evidence its authentication key and tag every "
        "untagged file that authenticates (not while the store is mounted)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cagefs.cli.keyargs import load_identities
    from cagefs.store import open_store
    from cagefs.store.verify import TAGGED, verify_store

    identities = load_identities(args.identity, args.passfile)
    store = open_store(args.store, identities, args.passfile)
    if store.auth is None and not args.upgrade:
        print(
            f"cagefs verify: {args.store} has no authentication key (made before tamper "
            "evidence): no file can be trusted until `cagefs verify --upgrade`",
            file=sys.stderr,
        )
    checked = damaged = tagged = 0
    with _writing(args.store, args.upgrade):
        for relative, problem in verify_store(store, args.upgrade):
            checked += 1
            tagged += problem == TAGGED
            if problem not in (None, TAGGED):
                damaged += 1
                print(f"{relative}: {problem}", flush=True)
    done = f", {tagged} tagged now" if args.upgrade else ""
    print(f"cagefs verify: {checked} files checked, {damaged} with problems{done}", file=sys.stderr)
    return EXIT_DAMAGE if damaged else 0


@contextlib.contextmanager
def _writing(root: Path, upgrade: bool) -> Iterator[None]:
    """--upgrade rewrites files: no mount or other verb may write the store meanwhile. A plain
    verify only reads, so it is safe beside a mount."""
    if not upgrade:
        yield
        return
    from cagefs.store.layout import remove_stray_temps
    from cagefs.store.lock import lock_store

    with lock_store(root, "verify --upgrade"):
        remove_stray_temps(root)  # an interrupted upgrade's, now that no daemon can own them
        yield
