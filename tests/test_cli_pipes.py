"""`cagefs encrypt`/`decrypt` on pipes, FIFOs, sockets and devices, as tools hand them over.

Real processes on real descriptors: the data goes in and out in odd-sized pieces, through
non-blocking pipes, and `age` reads what cagefs writes. No timings: bench/pipes.py measures.
"""

import fcntl
import hashlib
import os
import random
import signal
import socket
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_cli_crypt import CAGEFS, data_of, fails, ok

MIB = 1 << 20


def feed(fd: int, pieces: Iterator[bytes], close: bool = True) -> threading.Thread:
    """Write `pieces` to `fd` on a thread (and close it), as a producer process would."""

    def run() -> None:
        try:
            for piece in pieces:
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
        except BrokenPipeError:
            pass
        finally:
            if close:
                os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def drain(fd: int, out: bytearray, most: int = 1 << 30) -> threading.Thread:
    """Read `fd` to its end on a thread, at most `most` bytes per read, into `out`."""

    def run() -> None:
        while piece := os.read(fd, most):
            out.extend(piece)
        os.close(fd)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def odd_pieces(data: bytes, seed: int = 1) -> Iterator[bytes]:
    """`data` cut at random sizes from 1 byte to 200 KiB: short writes for the reader."""
    rng = random.Random(seed)
    at = 0
    while at < len(data):
        size = rng.choice([1, 7, 4096, 65535, 65536, 65537, 131072, 200_000])
        yield data[at : at + size]
        at += size


def through(args: list[str], pieces: Iterator[bytes], most: int = 1 << 30) -> tuple[int, bytes]:
    """Run cagefs with a pipe on stdin fed `pieces` and a pipe on stdout read `most` at a time."""
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    process = subprocess.Popen([CAGEFS, *args], stdin=in_r, stdout=out_w)
    os.close(in_r)
    os.close(out_w)
    out = bytearray()
    threads = [feed(in_w, pieces), drain(out_r, out, most)]
    status = process.wait(timeout=300)
    for thread in threads:
        thread.join(timeout=60)
    return status, bytes(out)


def age_decrypt(keyfile, data: bytes) -> bytes:
    done = subprocess.run(
        ["age", "-d", "-i", str(keyfile.path)], input=data, capture_output=True, check=True
    )
    return done.stdout


@pytest.mark.parametrize("size", [0, 1, 65536, 65537, 3 * MIB + 12345])
def test_pipes_in_and_out_with_short_reads_and_writes(size: int, keyfile) -> None:
    plain = data_of(size)
    status, encrypted = through(["encrypt", "-r", keyfile.recipient], odd_pieces(plain), 1000)
    assert status == 0
    assert age_decrypt(keyfile, encrypted) == plain
    identity = ["decrypt", "-i", str(keyfile.path)]
    status, decrypted = through(identity, odd_pieces(encrypted, seed=2), 777)
    assert status == 0
    assert len(decrypted) == size
    assert decrypted == plain


def test_armored_input_through_a_pipe(keyfile) -> None:
    plain = data_of(300_000)
    armored = ok("encrypt", "-a", "-r", keyfile.recipient, stdin=plain)
    status, decrypted = through(["decrypt", "-i", str(keyfile.path)], odd_pieces(armored), 999)
    assert status == 0
    assert decrypted == plain


@pytest.mark.parametrize("verb", ["encrypt", "decrypt"])
def test_non_blocking_input_and_output(verb: str, keyfile) -> None:
    """A pipe left in O_NONBLOCK mode (by a shell or a parent) is read to its end and written
    in full: a read or write that would block waits, and is not taken for the end."""
    plain = data_of(2 * MIB + 5)
    data = plain if verb == "encrypt" else ok("encrypt", "-r", keyfile.recipient, stdin=plain)
    key = ["-r", keyfile.recipient] if verb == "encrypt" else ["-i", str(keyfile.path)]
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    for fd in (in_r, out_w):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
    process = subprocess.Popen([CAGEFS, verb, *key], stdin=in_r, stdout=out_w)
    os.close(in_r)
    os.close(out_w)

    def slowly() -> Iterator[bytes]:  # the reader finds the pipe empty, again and again
        for piece in odd_pieces(data):
            time.sleep(0.001)
            yield piece

    out = bytearray()
    threads = [feed(in_w, slowly()), drain(out_r, out, 4096)]
    assert process.wait(timeout=300) == 0
    for thread in threads:
        thread.join(timeout=60)
    result = age_decrypt(keyfile, bytes(out)) if verb == "encrypt" else bytes(out)
    assert len(result) == len(plain)
    assert result == plain


def test_fifos_as_input_and_output(keyfile, tmp_path: Path) -> None:
    """Named pipes given as IN and -o OUT are read and written, never replaced by a file."""
    plain = data_of(MIB + 3)
    fifo_in, fifo_out = tmp_path / "in", tmp_path / "out"
    os.mkfifo(fifo_in)
    os.mkfifo(fifo_out)
    args = ["encrypt", "-r", keyfile.recipient, "-o", str(fifo_out), str(fifo_in)]
    process = subprocess.Popen([CAGEFS, *args])
    out = bytearray()
    threads = [
        feed(os.open(fifo_in, os.O_WRONLY), odd_pieces(plain)),
        drain(os.open(fifo_out, os.O_RDONLY), out, 5000),
    ]
    assert process.wait(timeout=300) == 0
    for thread in threads:
        thread.join(timeout=60)
    assert age_decrypt(keyfile, bytes(out)) == plain
    assert fifo_out.is_fifo() and fifo_in.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "key.txt", "out"]


def test_a_device_as_output_stays_a_device(keyfile, tmp_path: Path) -> None:
    """`-o /dev/null` as root must not rename a regular file over the device."""
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a copy of /dev/null
    ok("encrypt", "-r", keyfile.recipient, "-o", str(null), stdin=b"secret")
    assert null.is_char_device()
    assert null.stat().st_size == 0


@pytest.mark.parametrize("verb", ["encrypt", "decrypt"])
def test_sockets_as_input_and_output(verb: str, keyfile) -> None:
    plain = data_of(MIB + 7)
    data = plain if verb == "encrypt" else ok("encrypt", "-r", keyfile.recipient, stdin=plain)
    key = ["-r", keyfile.recipient] if verb == "encrypt" else ["-i", str(keyfile.path)]
    ours_in, theirs_in = socket.socketpair()
    ours_out, theirs_out = socket.socketpair()
    process = subprocess.Popen([CAGEFS, verb, *key], stdin=theirs_in, stdout=theirs_out)
    theirs_in.close()
    theirs_out.close()
    out = bytearray()

    def send() -> None:
        for piece in odd_pieces(data):
            ours_in.sendall(piece)
        ours_in.shutdown(socket.SHUT_WR)

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    while piece := ours_out.recv(3000):
        out.extend(piece)
    assert process.wait(timeout=300) == 0
    sender.join(timeout=60)
    ours_in.close()
    ours_out.close()
    result = age_decrypt(keyfile, bytes(out)) if verb == "encrypt" else bytes(out)
    assert result == plain


@pytest.mark.parametrize("verb", ["encrypt", "decrypt"])
def test_a_closed_reader_ends_the_process_by_sigpipe_silently(verb: str, keyfile) -> None:
    """Like cat and age: `cagefs decrypt big.age | head -c 10` ends quietly by SIGPIPE."""
    plain = data_of(8 * MIB)
    data = plain if verb == "encrypt" else ok("encrypt", "-r", keyfile.recipient, stdin=plain)
    key = ["-r", keyfile.recipient] if verb == "encrypt" else ["-i", str(keyfile.path)]
    in_r, in_w = os.pipe()
    out_r, out_w = os.pipe()
    process = subprocess.Popen(
        [CAGEFS, verb, *key], stdin=in_r, stdout=out_w, stderr=subprocess.PIPE
    )
    os.close(in_r)
    os.close(out_w)
    feeder = feed(in_w, odd_pieces(data))
    assert len(os.read(out_r, 10)) > 0
    os.close(out_r)
    _, stderr = process.communicate(timeout=300)
    feeder.join(timeout=60)
    assert (process.returncode, stderr) == (-signal.SIGPIPE, b"")


def test_input_that_ends_mid_way_leaves_no_output_file(keyfile, tmp_path: Path) -> None:
    """A producer that dies mid-way through a pipe: an error, and no -o file at all."""
    encrypted = ok("encrypt", "-r", keyfile.recipient, stdin=data_of(3 * MIB))
    out = tmp_path / "out"
    args = ["decrypt", "-i", str(keyfile.path), "-o", str(out)]
    in_r, in_w = os.pipe()
    process = subprocess.Popen([CAGEFS, *args], stdin=in_r, stderr=subprocess.PIPE)
    os.close(in_r)
    feed(in_w, odd_pieces(encrypted[: 2 * MIB])).join(timeout=60)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    assert b"payload" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.txt"]


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_a_process_stopped_mid_way_leaves_no_output_file(how: int, keyfile, tmp_path: Path):
    """Killed while writing -o OUT, half of the plaintext written: nothing at all in the
    directory (the output has no name until it is complete)."""
    encrypted = ok("encrypt", "-r", keyfile.recipient, stdin=data_of(6 * MIB))
    out = tmp_path / "out"
    in_r, in_w = os.pipe()
    args = [CAGEFS, "decrypt", "-i", str(keyfile.path), "-o", str(out)]
    process = subprocess.Popen(args, stdin=in_r, stderr=subprocess.PIPE)
    os.close(in_r)
    feed(in_w, iter([encrypted[: 4 * MIB]]), close=False).join(timeout=60)
    wait_for(lambda: output_written(process.pid) > MIB)
    process.send_signal(how)
    process.communicate(timeout=60)
    os.close(in_w)
    assert process.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.txt"]


def output_written(pid: int) -> int:
    """Bytes in the largest regular file process `pid` has open for writing."""
    sizes = [0]
    fds = Path(f"/proc/{pid}/fd")
    for fd in fds.iterdir():
        try:
            flags = int((Path(f"/proc/{pid}/fdinfo") / fd.name).read_text().split()[3], 8)
            info = os.stat(fd)
        except (FileNotFoundError, IndexError, ValueError):
            continue
        writable = flags & os.O_ACCMODE in (os.O_WRONLY, os.O_RDWR)
        if writable and stat.S_ISREG(info.st_mode):
            sizes.append(info.st_size)
    return max(sizes)


def wait_for(condition: Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_constant_memory_for_a_4_gib_stream(keyfile) -> None:
    """`generate | cagefs encrypt | cagefs decrypt | check`: 4 GiB, never on disk; the peak RSS
    of each process stays within a few MiB of what a 16 MiB stream takes."""
    small = peak_rss_through_encrypt_and_decrypt(keyfile, 16)
    large = peak_rss_through_encrypt_and_decrypt(keyfile, 4096)
    for verb, before, after in zip(("encrypt", "decrypt"), small, large, strict=True):
        growth = f"{verb}: {before >> 20} MiB for 16 MiB, {after >> 20} MiB for 4 GiB"
        assert after - before < 24 * MIB, growth


def peak_rss_through_encrypt_and_decrypt(keyfile, mib: int) -> tuple[int, int]:
    block = random.Random(mib).randbytes(MIB)
    gen_r, gen_w = os.pipe()
    mid_r, mid_w = os.pipe()
    out_r, out_w = os.pipe()
    encrypt = subprocess.Popen(
        [CAGEFS, "encrypt", "-r", keyfile.recipient], stdin=gen_r, stdout=mid_w
    )
    decrypt = subprocess.Popen(
        [CAGEFS, "decrypt", "-i", str(keyfile.path)], stdin=mid_r, stdout=out_w
    )
    for fd in (gen_r, mid_w, mid_r, out_w):
        os.close(fd)
    feeder = feed(gen_w, (block for _ in range(mib)))
    expected, got = hashlib.sha256(), hashlib.sha256()
    for _ in range(mib):
        expected.update(block)
    size = 0
    while piece := os.read(out_r, MIB):
        got.update(piece)
        size += len(piece)
    os.close(out_r)
    feeder.join(timeout=60)
    peaks = []
    for process in (encrypt, decrypt):
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        assert process.returncode == 0
        peaks.append(usage.ru_maxrss * 1024)
    assert size == mib * MIB
    assert got.hexdigest() == expected.hexdigest()
    return peaks[0], peaks[1]


@pytest.mark.parametrize("verb", ["encrypt", "decrypt"])
def test_a_write_error_is_one_line(verb: str, keyfile, tmp_path: Path) -> None:
    """Output is written behind on a thread: its errors still reach the user, as one line.
    (A copy of /dev/full, so that a regression cannot replace the real one.)"""
    full = tmp_path / "full"
    os.mknod(full, 0o666 | stat.S_IFCHR, os.makedev(1, 7))
    plain = data_of(3 * MIB)
    data = plain if verb == "encrypt" else ok("encrypt", "-r", keyfile.recipient, stdin=plain)
    key = ["-r", keyfile.recipient] if verb == "encrypt" else ["-i", str(keyfile.path)]
    assert "No space left on device" in fails(verb, *key, "-o", str(full), stdin=data)
    assert full.is_char_device()
