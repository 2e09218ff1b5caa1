"""Encryption/decryption throughput of the cagefs age engine against its references.

One run measures, for a buffer in memory and for a file on disk:
  - raw ChaCha20-Poly1305 from `cryptography` in 64 KiB chunks, one thread, sealing into a
    preallocated buffer (the ceiling: the engine adds framing, nonces and I/O on top of it);
  - the cagefs engine: PayloadWriter (via start_file), PayloadReader (via open_file), and
    decrypt_stream for forward-only sources;
  - pyrage (the Rust `age` crate behind a Python binding);
  - the Go `age` CLI (through pipes in memory, file to file on disk);
  - the `cagefs encrypt` / `cagefs decrypt` CLI, file to file (skipped if the verbs are missing);
and the cost of one random 4 KiB read in the big age file through PayloadReader.

The engine runs with its default thread count and again with one thread; the raw loop also
runs split over two threads, to show what parallel batches can reach. In memory, the engine and
the raw loop write into buffers allocated before the clock starts (pyrage and the CLIs allocate
their own output). Targets are checked against the one-thread raw figure.

Every figure is the best of `--repeat` runs (the machine is shared and noisy); MB is 10^6 bytes.
Files live in the page cache (just written, plenty of RAM), so the disk section measures the
file-system path, not the device. The printed table is also written to
`<results-dir>/crypto-latest.txt`, and all numbers with the command line to
`<results-dir>/crypto-<date>.json`.
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import platform
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cryptography
import pyrage
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench.harness import MB, MIB, RESULTS_DIR
from cagefs.age import X25519Identity, decrypt_stream, open_file, start_file
from cagefs.age import stream as age_stream
from cagefs.age.stream import CHUNK_CT_SIZE, CHUNK_SIZE, ChunkCipher, payload_size

BLOCK = 4 * MIB  # read/write size of every Python-side loop (64 chunks)


@dataclass
class Row:
    """Throughput of one implementation; None where it was not measured."""

    name: str
    enc: float | None = None
    dec: float | None = None
    note: str = ""


@dataclass
class Section:
    title: str
    size: int
    rows: dict[str, Row] = field(default_factory=dict)

    def add(self, key: str, row: Row) -> None:
        self.rows[key] = row


@dataclass
class Keys:
    """One X25519 identity in every form the contenders need."""

    identity: X25519Identity
    recipient: str
    identity_file: Path
    py_identity: object
    py_recipient: object


def best_rate(
    run: Callable[[], object], size: int, repeat: int, reset: Callable[[], object]
) -> float:
    """MB/s of the fastest of `repeat` runs; `reset` (untimed) runs before each one."""
    best = float("inf")
    for _ in range(repeat):
        reset()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return size / MB / best


def nothing() -> None:
    return None


# ---------------------------------------------------------------- raw ChaCha20-Poly1305


def _chunk_nonce(index: int) -> bytes:
    return index.to_bytes(12, "big")


def raw_seal(aead: ChaCha20Poly1305, src: memoryview, dst: memoryview, first: int = 0) -> None:
    """Seal `src` in 64 KiB chunks into `dst` (which has room for the tags)."""
    for i in range(-(-len(src) // CHUNK_SIZE)):
        part = src[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE]
        out = dst[i * CHUNK_CT_SIZE : i * CHUNK_CT_SIZE + len(part) + 16]
        aead.encrypt_into(_chunk_nonce(first + i), part, None, out)


def raw_open(aead: ChaCha20Poly1305, src: memoryview, dst: memoryview, first: int = 0) -> None:
    for i in range(-(-len(src) // CHUNK_CT_SIZE)):
        part = src[i * CHUNK_CT_SIZE : (i + 1) * CHUNK_CT_SIZE]
        out = dst[i * CHUNK_SIZE : i * CHUNK_SIZE + len(part) - 16]
        aead.decrypt_into(_chunk_nonce(first + i), part, None, out)


def sealed_size(size: int) -> int:
    return size + 16 * -(-size // CHUNK_SIZE)


def bench_raw_memory(data: bytes, repeat: int) -> Row:
    aead = ChaCha20Poly1305(os.urandom(32))
    src = memoryview(data)
    sealed = memoryview(bytearray(sealed_size(len(data))))
    plain = memoryview(bytearray(len(data)))
    enc = best_rate(lambda: raw_seal(aead, src, sealed), len(data), repeat, nothing)
    dec = best_rate(lambda: raw_open(aead, sealed, plain), len(data), repeat, nothing)
    assert plain == src
    return Row("raw ChaCha20-Poly1305 (64 KiB chunks)", enc, dec)


def bench_raw_memory_threads(data: bytes, repeat: int) -> Row:
    """The same loop split in two halves on two threads (the AEAD releases the GIL)."""
    aead = ChaCha20Poly1305(os.urandom(32))
    half = -(-len(data) // CHUNK_SIZE) // 2 * CHUNK_SIZE
    src = memoryview(data)
    sealed = memoryview(bytearray(sealed_size(len(data))))
    plain = memoryview(bytearray(len(data)))
    cut = sealed_size(half)

    def both(fn: Callable, a: memoryview, b: memoryview, a_cut: int, b_cut: int) -> None:
        other = threading.Thread(target=fn, args=(aead, a[a_cut:], b[b_cut:], half // CHUNK_SIZE))
        other.start()
        fn(aead, a[:a_cut], b[:b_cut])
        other.join()

    enc = best_rate(lambda: both(raw_seal, src, sealed, half, cut), len(data), repeat, nothing)
    dec = best_rate(lambda: both(raw_open, sealed, plain, cut, half), len(data), repeat, nothing)
    assert plain == src
    return Row("raw ChaCha20-Poly1305, 2 threads", enc, dec)


def bench_raw_file(src_path: Path, work: Path, repeat: int) -> Row:
    """Read BLOCK, seal it chunk by chunk into a buffer, one write per block; and back."""
    aead = ChaCha20Poly1305(os.urandom(32))
    size = src_path.stat().st_size
    sealed_path, plain_path = work / "raw.sealed", work / "raw.plain"

    def transform(inp: Path, out: Path, in_block: int, out_block: int, fn: Callable) -> None:
        buf, res = bytearray(in_block), bytearray(out_block)
        with open(inp, "rb", buffering=0) as fi, open(out, "wb", buffering=0) as fo:
            index = 0
            while n := fi.readinto(buf):
                out_len = sealed_size(n) if fn is raw_seal else n - 16 * -(-n // CHUNK_CT_SIZE)
                fn(aead, memoryview(buf)[:n], memoryview(res)[:out_len], index)
                fo.write(memoryview(res)[:out_len])
                index += -(-n // (CHUNK_SIZE if fn is raw_seal else CHUNK_CT_SIZE))

    seal_block = sealed_size(BLOCK)
    enc = best_rate(
        lambda: transform(src_path, sealed_path, BLOCK, seal_block, raw_seal),
        size,
        repeat,
        lambda: remove(sealed_path),
    )
    dec = best_rate(
        lambda: transform(sealed_path, plain_path, seal_block, BLOCK, raw_open),
        size,
        repeat,
        lambda: remove(plain_path),
    )
    check_same(src_path, plain_path)
    remove(sealed_path, plain_path)
    return Row("raw ChaCha20-Poly1305 (64 KiB chunks)", enc, dec)


# ---------------------------------------------------------------- cagefs engine


class Collector:
    """A sink that copies into a buffer allocated (and faulted in) before the clock starts.

    Keeping the engine's output in a list instead would time the kernel handing out 256 MiB
    of fresh pages, which the raw figure does not pay either.
    """

    def __init__(self, capacity: int) -> None:
        self.buffer = bytearray(capacity)
        self.view = memoryview(self.buffer)
        self.filled = 0

    def reset(self) -> None:
        self.filled = 0

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.view[self.filled : self.filled + len(data)] = data
        self.filled += len(data)

    def value(self) -> bytes:
        return bytes(self.view[: self.filled])


def engine_encrypt(data: memoryview, keys: Keys, sink: Callable[[bytes], object]) -> None:
    writer = start_file(sink, [keys.identity.recipient()])
    for offset in range(0, len(data), BLOCK):
        writer.write(data[offset : offset + BLOCK])
    writer.close()


def engine_read_fd(fd: int, keys: Keys, sink: Callable[[memoryview], object]) -> int:
    """Read a whole age file through PayloadReader.readinto in BLOCK pieces."""
    reader = open_file(fd, [keys.identity]).reader
    view = memoryview(bytearray(BLOCK))
    offset = 0
    while n := reader.readinto(offset, view):
        sink(view[:n])
        offset += n
    return offset


def engine_read_memory(fd: int, keys: Keys, target: memoryview) -> None:
    """PayloadReader.readinto straight into the target buffer, BLOCK by BLOCK."""
    reader = open_file(fd, [keys.identity]).reader
    for offset in range(0, reader.size, BLOCK):
        reader.readinto(offset, target[offset : offset + BLOCK])


def bench_engine_memory(data: bytes, keys: Keys, repeat: int, label: str = "") -> tuple[Row, Row]:
    sealed = Collector(payload_size(len(data)) + 4096)
    enc = best_rate(
        lambda: engine_encrypt(memoryview(data), keys, sealed.write),
        len(data),
        repeat,
        sealed.reset,
    )
    ciphertext = sealed.value()
    plain = Collector(len(data))
    fd = os.memfd_create("bench-age")
    try:
        os.write(fd, ciphertext)
        dec = best_rate(
            lambda: engine_read_memory(fd, keys, plain.view), len(data), repeat, nothing
        )
        assert plain.buffer == data
    finally:
        os.close(fd)

    def stream() -> None:
        decrypt_stream(io.BytesIO(ciphertext), plain.write, [keys.identity])

    stream_dec = best_rate(stream, len(data), repeat, plain.reset)
    assert plain.buffer == data
    return (
        Row(f"cagefs PayloadWriter / PayloadReader{label}", enc, dec),
        Row(f"cagefs decrypt_stream (forward-only){label}", None, stream_dec),
    )


def bench_engine_file(src_path: Path, work: Path, keys: Keys, repeat: int) -> tuple[Row, Row]:
    size = src_path.stat().st_size
    age_path, plain_path = work / "engine.age", work / "engine.plain"

    def encrypt() -> None:
        buf = bytearray(BLOCK)
        view = memoryview(buf)
        with open(src_path, "rb", buffering=0) as fi, open(age_path, "wb", buffering=0) as fo:
            writer = start_file(fo.write, [keys.identity.recipient()])
            while n := fi.readinto(buf):
                writer.write(view[:n])
            writer.close()

    def decrypt() -> None:
        with open(age_path, "rb") as fi, open(plain_path, "wb", buffering=0) as fo:
            engine_read_fd(fi.fileno(), keys, fo.write)

    def stream() -> None:
        with open(age_path, "rb") as fi, open(plain_path, "wb", buffering=0) as fo:
            decrypt_stream(fi, fo.write, [keys.identity])

    enc = best_rate(encrypt, size, repeat, lambda: remove(age_path))
    dec = best_rate(decrypt, size, repeat, lambda: remove(plain_path))
    check_same(src_path, plain_path)
    stream_dec = best_rate(stream, size, repeat, lambda: remove(plain_path))
    check_same(src_path, plain_path)
    remove(plain_path)  # the .age file stays for the random-read test
    return (
        Row("cagefs PayloadWriter / PayloadReader", enc, dec),
        Row("cagefs decrypt_stream (forward-only)", None, stream_dec),
    )


# ---------------------------------------------------------------- pyrage


def bench_pyrage_memory(data: bytes, keys: Keys, repeat: int) -> Row:
    enc = best_rate(lambda: pyrage.encrypt(data, [keys.py_recipient]), len(data), repeat, nothing)
    ciphertext = pyrage.encrypt(data, [keys.py_recipient])
    dec = best_rate(
        lambda: pyrage.decrypt(ciphertext, [keys.py_identity]), len(data), repeat, nothing
    )
    assert pyrage.decrypt(ciphertext, [keys.py_identity]) == data
    return Row("pyrage encrypt/decrypt (bytes)", enc, dec)


def bench_pyrage_file(src_path: Path, work: Path, keys: Keys, repeat: int) -> Row:
    size = src_path.stat().st_size
    age_path, plain_path = work / "pyrage.age", work / "pyrage.plain"
    enc = best_rate(
        lambda: pyrage.encrypt_file(str(src_path), str(age_path), [keys.py_recipient]),
        size,
        repeat,
        lambda: remove(age_path),
    )
    dec = best_rate(
        lambda: pyrage.decrypt_file(str(age_path), str(plain_path), [keys.py_identity]),
        size,
        repeat,
        lambda: remove(plain_path),
    )
    check_same(src_path, plain_path)
    remove(age_path, plain_path)
    return Row("pyrage encrypt_file/decrypt_file", enc, dec)


# ---------------------------------------------------------------- CLIs


def run(cmd: list[str], stdin: bytes | None = None) -> bytes:
    done = subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def bench_age_memory(data: bytes, keys: Keys, repeat: int) -> Row:
    encrypt = ["age", "-e", "-r", keys.recipient]
    decrypt = ["age", "-d", "-i", str(keys.identity_file)]
    enc = best_rate(lambda: run(encrypt, data), len(data), repeat, nothing)
    ciphertext = run(encrypt, data)
    dec = best_rate(lambda: run(decrypt, ciphertext), len(data), repeat, nothing)
    assert run(decrypt, ciphertext) == data
    return Row("age CLI (stdin -> stdout pipes)", enc, dec)


def cagefs_cli() -> list[str]:
    return [sys.executable, "-m", "cagefs"]


def cagefs_has_crypt_verbs() -> bool:
    probe = [*cagefs_cli(), "encrypt", "--help"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def bench_cli_file(
    name: str, tool: list[str], src_path: Path, work: Path, keys: Keys, repeat: int
) -> Row:
    """File to file: `TOOL -e -r R -o OUT IN` style, flags shared by age and cagefs."""
    size = src_path.stat().st_size
    age_path, plain_path = work / "cli.age", work / "cli.plain"
    is_age = tool == ["age"]
    enc_verb, dec_verb = (["-e"], ["-d"]) if is_age else (["encrypt"], ["decrypt"])
    encrypt = [*tool, *enc_verb, "-r", keys.recipient, "-o", str(age_path), str(src_path)]
    decrypt = [
        *tool,
        *dec_verb,
        "-i",
        str(keys.identity_file),
        "-o",
        str(plain_path),
        str(age_path),
    ]
    enc = best_rate(lambda: run(encrypt), size, repeat, lambda: remove(age_path))
    dec = best_rate(lambda: run(decrypt), size, repeat, lambda: remove(plain_path))
    check_same(src_path, plain_path)
    remove(age_path, plain_path)
    return Row(name, enc, dec)


# ---------------------------------------------------------------- random reads


def bench_random_reads(age_path: Path, keys: Keys, reads: int) -> dict:
    """Median cost of one 4 KiB read at a random offset, and the chunks each read opens.

    The chunk count comes from a second, untimed pass that counts ChunkCipher openings.
    """
    rng = random.Random(1)
    with open(age_path, "rb") as f:
        reader = open_file(f.fileno(), [keys.identity]).reader
        offsets = [rng.randrange(0, reader.size - 4096) for _ in range(reads)]
        timings = []
        for offset in offsets:
            start = time.perf_counter_ns()
            reader.read(offset, 4096)
            timings.append(time.perf_counter_ns() - start)
        with count_chunk_openings() as opened:
            for offset in offsets:
                reader.read(offset, 4096)
    return {
        "file_bytes": age_path.stat().st_size,
        "reads": reads,
        "median_us": statistics.median(timings) / 1000,
        "p90_us": statistics.quantiles(timings, n=10)[-1] / 1000,
        "chunks_per_read": opened[0] / reads,
        "max_chunks_per_read": 2,
    }


@contextmanager
def count_chunk_openings() -> Iterator[list[int]]:
    """Count calls to ChunkCipher.open_into (every opening path goes through it)."""
    counter = [0]
    original = ChunkCipher.open_into

    def counting(self: ChunkCipher, *args: object, **kwargs: object) -> object:
        counter[0] += 1
        return original(self, *args, **kwargs)

    ChunkCipher.open_into = counting  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        ChunkCipher.open_into = original  # type: ignore[method-assign]


# ---------------------------------------------------------------- helpers


def remove(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def check_same(a: Path, b: Path) -> None:
    """Cheap identity check of two big files: size, and a hash of the first and last MiB."""

    def digest(path: Path) -> tuple[int, str]:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(MIB)
            f.seek(max(0, size - MIB))
            return size, hashlib.sha256(head + f.read()).hexdigest()

    if digest(a) != digest(b):
        raise RuntimeError(f"{b} does not match {a}")


def write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for offset in range(0, size, 64 * MIB):
            f.write(os.urandom(min(64 * MIB, size - offset)))


def make_keys(work: Path) -> Keys:
    identity = X25519Identity.generate()
    identity_file = work / "identity.txt"
    identity_file.write_text(f"{identity}\n")
    py_identity = pyrage.x25519.Identity.from_str(str(identity))
    return Keys(
        identity, str(identity.recipient()), identity_file, py_identity, py_identity.to_public()
    )


# ---------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def fmt(value: float | None, spec: str = "8.0f") -> str:
    return format(value, spec) if value is not None else " " * (int(spec.split(".")[0]) - 1) + "-"


def section_table(section: Section) -> list[str]:
    lines = [
        f"== {section.title} ({section.size / MIB:.0f} MiB) ==",
        f"{'':48} {'enc MB/s':>9} {'dec MB/s':>9}",
    ]
    for row in section.rows.values():
        note = f"  ({row.note})" if row.note else ""
        lines.append(f"{row.name:48} {fmt(row.enc, '9.0f')} {fmt(row.dec, '9.0f')}{note}")
    engine = section.rows["engine"]
    lines.append("ratios of the engine (enc / dec):")
    for key in ("raw", "pyrage", "age"):
        ref = section.rows.get(key)
        if ref:
            enc, dec = ratio(engine.enc, ref.enc), ratio(engine.dec, ref.dec)
            lines.append(f"  vs {ref.name:45} {fmt(enc, '8.2f')}x {fmt(dec, '8.2f')}x")
    return lines


def targets(sections: list[Section]) -> list[dict]:
    """The issue's targets: engine >= 60% raw and >= 10x pyrage; CLI file-to-file >= age CLI."""
    checks = []
    for section in sections:
        rows = section.rows
        for direction in ("enc", "dec"):
            engine = getattr(rows["engine"], direction)
            for ref_key, factor, label in (
                ("raw", 0.6, ">= 60% of raw"),
                ("pyrage", 10, ">= 10x pyrage"),
            ):
                ref = getattr(rows[ref_key], direction)
                checks.append(
                    {
                        "target": f"{section.title}: engine {direction} {label}",
                        "value": ratio(engine, ref),
                        "need": factor,
                        "status": "PASS" if engine >= factor * ref else "FAIL",
                    }
                )
        if "cli" in rows:
            for direction in ("enc", "dec"):
                cli, age = getattr(rows["cli"], direction), getattr(rows["age"], direction)
                status = "SKIP" if cli is None else ("PASS" if cli >= age else "FAIL")
                checks.append(
                    {
                        "target": f"{section.title}: cagefs CLI {direction} >= age CLI",
                        "value": ratio(cli, age),
                        "need": 1.0,
                        "status": status,
                    }
                )
    return checks


def report(sections: list[Section], reads: dict | None, checks: list[dict], command: str) -> str:
    lines = [f"$ {command}", environment_line(), ""]
    for section in sections:
        lines += [*section_table(section), ""]
    if reads:
        lines.append(
            f"random 4 KiB read in a {reads['file_bytes'] / MIB:.0f} MiB age file (PayloadReader,"
            f" page cache warm): median {reads['median_us']:.0f} us, p90 {reads['p90_us']:.0f} us,"
            f" {reads['chunks_per_read']:.2f} chunks decrypted per read"
        )
        lines.append("")
    lines.append("targets:")
    for check in checks:
        value = f"{check['value']:.2f}" if check["value"] is not None else "-"
        lines.append(f"  [{check['status']}] {check['target']} (got {value}, need {check['need']})")
    return "\n".join(lines) + "\n"


def environment() -> dict:
    age_version = subprocess.run(["age", "--version"], capture_output=True, text=True, check=False)
    return {
        "python": platform.python_version(),
        "cryptography": cryptography.__version__,
        "age": age_version.stdout.strip(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "load_average": os.getloadavg(),
    }


def environment_line() -> str:
    env = environment()
    return (
        f"python {env['python']}, cryptography {env['cryptography']}, age {env['age']},"
        f" {env['cpus']} CPUs, load {env['load_average'][0]:.1f}; best of runs; MB = 10^6 bytes"
    )


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="in-memory buffer size")
    parser.add_argument("--file-size-mib", type=int, default=1024, help="on-disk file size")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where temp files go")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (best one counts)")
    parser.add_argument("--reads", type=int, default=2000, help="random 4 KiB reads to time")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.file_size_mib, args.repeat, args.reads = 4, 8, 1, 50
    return args


def measure_memory(args: argparse.Namespace, keys: Keys) -> Section:
    section = Section("in memory", args.size_mib * MIB)
    data = os.urandom(section.size)
    section.add("raw", bench_raw_memory(data, args.repeat))
    section.add("raw2", bench_raw_memory_threads(data, args.repeat))
    engine, stream = bench_engine_memory(data, keys, args.repeat)
    section.add("engine", engine)
    section.add("stream", stream)
    threads = age_stream.crypto_threads()
    age_stream.set_crypto_threads(1)
    try:
        engine, stream = bench_engine_memory(data, keys, args.repeat, " [1 thread]")
    finally:
        age_stream.set_crypto_threads(threads)
    section.add("engine1", engine)
    section.add("stream1", stream)
    section.add("pyrage", bench_pyrage_memory(data, keys, args.repeat))
    section.add("age", bench_age_memory(data, keys, args.repeat))
    return section


def measure_file(args: argparse.Namespace, keys: Keys, work: Path) -> tuple[Section, dict]:
    section = Section("file on disk", args.file_size_mib * MIB)
    src = work / "plain.bin"
    write_random_file(src, section.size)
    section.add("raw", bench_raw_file(src, work, args.repeat))
    engine, stream = bench_engine_file(src, work, keys, args.repeat)
    section.add("engine", engine)
    section.add("stream", stream)
    reads = bench_random_reads(work / "engine.age", keys, args.reads)
    remove(work / "engine.age")
    section.add("pyrage", bench_pyrage_file(src, work, keys, args.repeat))
    section.add("age", bench_cli_file("age CLI (-o OUT IN)", ["age"], src, work, keys, args.repeat))
    if cagefs_has_crypt_verbs():
        row = bench_cli_file(
            "cagefs encrypt/decrypt CLI (-o OUT IN)", cagefs_cli(), src, work, keys, args.repeat
        )
    else:
        row = Row("cagefs encrypt/decrypt CLI", note="skipped: `cagefs encrypt` does not exist yet")
    section.add("cli", row)
    return section, reads


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args_text = sys.argv[1:] if argv is None else argv
    command = shlex.join([".venv/bin/python", "-m", "bench.crypto", *args_text])
    work = Path(tempfile.mkdtemp(prefix="cagefs-bench-", dir=args.dir))
    try:
        keys = make_keys(work)
        memory = measure_memory(args, keys)
        disk, reads = measure_file(args, keys, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    sections = [memory, disk]
    checks = targets(sections)
    text = report(sections, reads, checks, command)
    print(text, end="")
    save(args.results_dir, text, sections, reads, checks, command)
    return 0


def save(
    where: Path, text: str, sections: list[Section], reads: dict, checks: list[dict], command: str
) -> None:
    where.mkdir(parents=True, exist_ok=True)
    today = datetime.date.today().isoformat()
    results = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": environment(),
        "sections": [
            {"title": s.title, "bytes": s.size, "rows": {k: asdict(r) for k, r in s.rows.items()}}
            for s in sections
        ],
        "random_4k_read": reads,
        "targets": checks,
    }
    (where / f"crypto-{today}.json").write_text(json.dumps(results, indent=2) + "\n")
    (where / "crypto-latest.txt").write_text(text)


if __name__ == "__main__":
    sys.exit(main())
