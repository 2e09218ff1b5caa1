"""Small helpers shared by the engine and CLI test modules (imported as `support`)."""

import io
import subprocess
import sys

from cagefs.age import decrypt_stream, start_file


def cagefs(*args: object, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a user would: a fresh interpreter, bytes in and out."""
    return subprocess.run(
        [sys.executable, "-m", "cagefs", *map(str, args)],
        input=stdin,
        capture_output=True,
        timeout=120,
        check=False,
    )


def encrypt_bytes(recipients: list, plaintext: bytes) -> bytes:
    out = bytearray()
    writer = start_file(out.extend, recipients)
    writer.write(plaintext)
    writer.close()
    return bytes(out)


def decrypt_bytes(data: bytes, identities: list) -> bytes:
    out = bytearray()
    decrypt_stream(io.BytesIO(data), out.extend, identities)
    return bytes(out)
