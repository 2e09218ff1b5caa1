"""`cagefs keygen`: make an identity file the way age-keygen does, or print its recipient."""

import argparse
import os
import sys

from cagefs.age.keys import identity_file_text, load_identity_file
from cagefs.age.pq import HybridIdentity
from cagefs.age.x25519 import X25519Identity
from cagefs.errors import CageError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("keygen", help="generate an identity (like age-keygen)")
    parser.add_argument(
        "-o", "--output", metavar="FILE", help="write the identity here (mode 0600)"
    )
    parser.add_argument(
        "--pq",
        action="store_true",
        help="generate a post-quantum hybrid identity (mlkem768x25519, recipient age1pq1...)",
    )
    parser.add_argument(
        "-y",
        dest="convert",
        metavar="IDENTITY_FILE",
        nargs="?",
        const="-",
        help="print the recipients of an identity file (age or OpenSSH key) instead",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.convert is not None:
        return print_recipients(args.convert, args.output)
    identity = HybridIdentity.generate() if args.pq else X25519Identity.generate()
    text = identity_file_text(identity)
    if args.output:
        write_private(args.output, text)
        print(f"Public key: {identity.recipient()}", file=sys.stderr)
    else:
        sys.stdout.write(text)
        if not sys.stdout.isatty():
            print(f"Public key: {identity.recipient()}", file=sys.stderr)
    return 0


def print_recipients(path: str, output: str | None) -> int:
    """No passphrase is ever needed: an OpenSSH key file shows its public key in clear."""
    data = sys.stdin.buffer.read() if path == "-" else read_bytes(path)
    lines = [f"{identity.recipient()}\n" for identity in load_identity_file(data, path)]
    if output:
        with open(output, "w") as f:
            f.writelines(lines)
    else:
        sys.stdout.writelines(lines)
    return 0


def read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def write_private(path: str, text: str) -> None:
    """Create a new file readable only by its owner; never overwrite an existing key."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CageError(f"{path} already exists: refusing to overwrite a key file") from None
    with os.fdopen(fd, "w") as f:
        f.write(text)
