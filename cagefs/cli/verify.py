"""`cagefs verify STORE`: list every backing file that is damaged, untrusted or untagged.

Each line on stdout is `PATH: problem`, PATH the backing file relative to STORE. Pending
change-journal records are checked too (a damaged one is listed by its path under
`.cagefs/journal/`: it would refuse the next mount), and counted with the files they belong to.
The exit status is 0 when every file decrypts, authenticates and carries the store's proof of
origin and every record reads, and ExitCode.DAMAGE when anything was listed. `--upgrade` gives
a store made before tamper evidence its authentication key and tags its untagged files first
(resumable: run it again after a crash).
"""

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from cagefs.cli.keyargs import add_identity_arguments, open_store_from
from cagefs.errors import ExitCode

if TYPE_CHECKING:
    from cagefs.cli.progress import Progress
    from cagefs.store import Store


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify",
        help="check every file of a store (and tag an old store's files with --upgrade)",
        description="Decrypt and authenticate every backing file and check its proof of "
        f"origin; list each bad one as 'PATH: problem'. Exit status {ExitCode.DAMAGE:d} if any.",
    )
    parser.add_argument("store", metavar="STORE", type=Path)
    add_identity_arguments(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (store, checked, problems: [{path, problem}]) on stdout",
    )
    parser.add_argument(
        "--upgrade",
        action="store_true",
        help="give a store made before tamper evidence its authentication key and tag every "
        "untagged file that authenticates (not while the store is mounted)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from cagefs.cli.progress import Progress
    from cagefs.store.verify import GONE, TAGGED, backing_files, verify_store

    store = open_store_from(args, check_origin=False)  # an old store is listed, not refused
    if store.auth is None and not args.upgrade:
        print(
            f"cagefs verify: {args.store} has no authentication key (made before tamper "
            "evidence): no file can be trusted until `cagefs verify --upgrade`",
            file=sys.stderr,
        )
    problems: list[dict[str, str]] = []
    checked = tagged = 0
    with _writing(args.store, args.upgrade):
        files = [(relative, _size(store.root / relative)) for relative in backing_files(store.root)]
        progress = Progress("verify", len(files), sum(size for _, size in files))
        try:
            for (relative, problem), (_, size) in zip(
                verify_store(store, args.upgrade, [relative for relative, _ in files]),
                files,
                strict=True,
            ):
                progress(relative, size)
                if problem == GONE:
                    continue
                checked += 1
                tagged += problem == TAGGED
                if problem not in (None, TAGGED):
                    problems.append({"path": relative, "problem": problem})
                    if not args.json:
                        progress.note(f"{relative}: {problem}")
            pending = _check_journal(store, problems, progress if not args.json else None)
        finally:
            progress.close()
    if args.json:
        report = {"store": str(args.store), "checked": checked, "problems": problems}
        report |= {"journal": {"records": sum(pending.values()), "files": sorted(pending)}}
        print(json.dumps(report | ({"tagged": tagged} if args.upgrade else {}), indent=1))
    done = f", {tagged} tagged now" if args.upgrade else ""
    print(
        f"cagefs verify: {checked} files checked, {len(problems)} with problems{done}",
        file=sys.stderr,
    )
    if pending:
        print(
            f"cagefs verify: {sum(pending.values())} journal record(s) not yet folded into "
            f"{', '.join(sorted(pending))} (a read-write mount or `cagefs compact` folds them)",
            file=sys.stderr,
        )
    return ExitCode.DAMAGE if problems else 0


def _check_journal(
    store: "Store", problems: list[dict[str, str]], progress: "Progress | None"
) -> dict[str, int]:
    """Check every pending journal record as recovery would read it; a damaged one is a
    problem (it would refuse the next mount). Returns the records per file path."""
    from cagefs.store.journal import check_records

    pending: dict[str, int] = {}
    for where, record in check_records(store.root, store.identities, store.auth):
        if isinstance(record, str):
            problems.append({"path": where, "problem": record})
            if progress is not None:
                progress.note(f"{where}: {record}")
        else:
            pending[record.path] = pending.get(record.path, 0) + 1
    return pending


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


@contextlib.contextmanager
def _writing(root: Path, upgrade: bool) -> Iterator[None]:
    """--upgrade rewrites files: no mount or other verb may write the store meanwhile. A plain
    verify only reads, so it is safe beside a mount."""
    if not upgrade:
        yield
        return
    from cagefs.store.links import recover
    from cagefs.store.lock import lock_store

    with lock_store(root, "verify --upgrade"):
        recover(root)  # an interrupted upgrade's, now that no daemon can own them
        yield
