"""`cagefs encrypt` and `cagefs decrypt`: age-compatible file encryption with age's flags.

Both stream in blocks, so memory does not grow with the input. An output file appears only
complete: it has no name until it is complete and is then renamed over OUT, so a failed or
killed decryption never leaves a plausible-looking truncated plaintext behind (a FIFO or a
device named by -o is written in place). A closed standard output (`| head`) ends the process
by SIGPIPE, silently, as it does `cat` and `age`.

Speed: input is read ahead and output written behind on threads of their own, in large blocks
(`blockio`), so that a pipe keeps up with a file and the engine never waits for either; the
engine seals and opens straight into the buffers the writer lends, and a regular binary file
is decrypted with `PayloadReader.readinto`. This module imports only the age engine: no store,
FUSE or trio, which cost start-up time.
"""

import argparse
import contextlib
import errno
import itertools
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Iterator, Sequence

from cagefs.age.armor import ArmorWriter, armor_reader, is_armored
from cagefs.age.file import BlockStream, decrypt_blocks, decrypt_stream, open_file, start_file
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.scrypt import ScryptRecipient
from cagefs.age.stream import Sink
from cagefs.cli.blockio import WriteBehind, pread_reusing, read_blocks, written_behind
from cagefs.cli.keyargs import load_identities, load_recipients, passphrase_identity
from cagefs.errors import CageError
from cagefs.secrets import get_passphrase, prompt_passphrase

BLOCK = 4 << 20  # a regular file's decryption: two engine batches per read


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    enc = subparsers.add_parser("encrypt", help="encrypt a file to recipients (like age -e)")
    enc.add_argument("-r", "--recipient", action="append", default=[], metavar="RECIPIENT")
    enc.add_argument("-R", "--recipients-file", action="append", default=[], metavar="PATH")
    enc.add_argument("-p", "--passphrase", action="store_true", help="ask for a passphrase")
    enc.add_argument("--passfile", metavar="FILE", help="passphrase from this file's first line")
    enc.add_argument("-a", "--armor", action="store_true", help="write ASCII-armored output")
    enc.add_argument("-o", "--output", metavar="OUT", help="output file (default: stdout)")
    enc.add_argument("input", nargs="?", metavar="IN", help="input file (default: stdin)")
    enc.set_defaults(run=run_encrypt)

    dec = subparsers.add_parser("decrypt", help="decrypt an age file, binary or armored")
    dec.add_argument("-i", "--identity", action="append", default=[], metavar="IDENTITY_FILE")
    dec.add_argument("-p", "--passphrase", action="store_true", help="ask for a passphrase")
    dec.add_argument("--passfile", metavar="FILE", help="passphrase from this file's first line")
    dec.add_argument("-o", "--output", metavar="OUT", help="output file (default: stdout)")
    dec.add_argument("input", nargs="?", metavar="IN", help="input file (default: stdin)")
    dec.set_defaults(run=run_decrypt)


def run_encrypt(args: argparse.Namespace) -> int:
    if not args.armor and _is_std(args.output) and sys.stdout.isatty():
        raise CageError("refusing to write binary ciphertext to a terminal (use -a or -o FILE)")
    recipients = _encrypt_recipients(args)
    with _open_input(args.input) as src, _output(args.output) as sink:
        armor = ArmorWriter(sink) if args.armor else None
        writer = start_file(armor.write if armor else sink, recipients)
        for block in read_blocks(src):
            writer.write(block)
        writer.close()
        if armor:
            armor.close()
    return 0


def run_decrypt(args: argparse.Namespace) -> int:
    identities = load_identities(args.identity, args.passfile)
    if args.passphrase or args.passfile or not args.identity:
        identities.append(passphrase_identity(args.passfile))  # asks only if a file needs it
    with _open_input(args.input) as src, _output(args.output) as sink:
        if _is_binary_file(src):
            _decrypt_file(src, sink, identities)
        else:
            _decrypt_blocks(src, sink, identities)
    return 0


def _encrypt_recipients(args: argparse.Namespace) -> list[Recipient]:
    """Recipients from -r/-R, or a passphrase, which the spec says must be the only recipient."""
    keys = args.recipient or args.recipients_file
    if (args.passphrase or args.passfile) and keys:
        raise CageError("-p/--passfile cannot be combined with -r/-R: a passphrase must be alone")
    if args.passphrase or args.passfile:
        passphrase = get_passphrase(args.passfile, prompt_passphrase, "Enter passphrase: ", True)
        return [ScryptRecipient(passphrase)]
    if not keys:
        raise CageError("no recipients given (use -r, -R, -p or --passfile)")
    return load_recipients(args.recipient, args.recipients_file)


def _is_binary_file(fd: int) -> bool:
    return stat.S_ISREG(os.fstat(fd).st_mode) and not is_armored(os.pread(fd, 2048, 0))


def _decrypt_file(fd: int, sink: WriteBehind, identities: Sequence[Identity]) -> None:
    """A regular binary file is read with the seekable reader: its size is checked up front."""
    reader = open_file(fd, identities).reader
    pread = pread_reusing(fd)
    offset = 0
    while True:
        buffer = sink.lend(BLOCK)
        n = reader.readinto(offset, buffer, pread)
        sink(buffer[:n])
        if not n:
            break
        offset += n


def _decrypt_blocks(fd: int, sink: Sink, identities: Sequence[Identity]) -> None:
    """A pipe, socket or terminal (or an armored file), read ahead in blocks."""
    blocks = read_blocks(fd)
    first = next(blocks, b"")
    blocks = itertools.chain([first], blocks)
    if is_armored(bytes(first[:2048])):
        decrypt_stream(armor_reader(BlockStream(blocks)), sink, identities)  # type: ignore[arg-type]
    else:
        decrypt_blocks(blocks, sink, identities)


def _is_std(path: str | None) -> bool:
    return path in (None, "-")


@contextlib.contextmanager
def _open_input(path: str | None) -> Iterator[int]:
    if _is_std(path):
        yield sys.stdin.fileno()
        return
    assert path is not None
    fd = os.open(path, os.O_RDONLY)
    try:
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def _output(path: str | None) -> Iterator[WriteBehind]:
    """A sink into stdout, into a FIFO or device named by `path`, or into a regular file that
    appears only complete (`_complete_file`)."""
    if _is_std(path):
        sys.stdout.flush()  # nothing buffered may come after what goes straight to the fd
        previous = signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        try:
            with written_behind(sys.stdout.fileno()) as sink:
                yield sink
        finally:
            signal.signal(signal.SIGPIPE, previous)
        return
    assert path is not None
    try:
        special = not stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        special = False
    if not special:
        with _complete_file(path) as sink:
            yield sink
        return
    fd = os.open(path, os.O_WRONLY)  # renaming over /dev/null or a FIFO would replace it
    try:
        with written_behind(fd) as sink:
            yield sink
    finally:
        os.close(fd)


@contextlib.contextmanager
def _complete_file(path: str) -> Iterator[WriteBehind]:
    """A sink into a new file that replaces `path` only once complete.

    The file is made unnamed (O_TMPFILE) in `path`'s directory, so that not even a process
    killed mid-way leaves part of it behind, and is named and renamed over `path` at the end;
    where O_TMPFILE is not supported, it is a named temp file from the start.
    """
    directory = os.path.dirname(path) or "."
    try:
        if not os.path.isdir("/proc/self/fd"):  # needed to name it (`_name_unnamed`)
            raise OSError(errno.EOPNOTSUPP, "no /proc")
        fd, temp = os.open(directory, os.O_TMPFILE | os.O_WRONLY, 0o600), None
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        fd, temp = _named_temp(path)
    try:
        try:
            with written_behind(fd) as sink:
                yield sink
            os.fchmod(fd, 0o666 & ~_umask())
            if temp is None:
                temp = _name_unnamed(fd, path)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        if temp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        raise


def _named_temp(path: str) -> tuple[int, str]:
    return tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=".partial", dir=os.path.dirname(path) or "."
    )


def _name_unnamed(fd: int, path: str) -> str:
    """Give the O_TMPFILE file `fd` a fresh temp name next to `path`."""
    directory, base = os.path.split(path)
    # linkat(AT_SYMLINK_FOLLOW) of its /proc link; os.link calls that only given a dir_fd.
    fds = os.open("/proc/self/fd", os.O_PATH | os.O_DIRECTORY)
    try:
        while True:
            temp = os.path.join(directory, f".{base}.{os.urandom(6).hex()}.partial")
            with contextlib.suppress(FileExistsError):
                os.link(str(fd), temp, src_dir_fd=fds, follow_symlinks=True)
                return temp
    finally:
        os.close(fds)


def _umask() -> int:
    mask = os.umask(0o077)
    os.umask(mask)
    return mask
