"""Strict, canonical unpadded base64 and Bech32, as the age format uses them.

age rejects any alternative spelling of the same bytes (padding, stray bits, mixed case), so a
header has exactly one valid encoding and its MAC covers exactly what was parsed.
"""

import binascii
import string

from cagefs.age.errors import KeyFormatError

_B64_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/")


def b64encode(data: bytes) -> str:
    """Standard-alphabet base64 with the `=` padding stripped."""
    return binascii.b2a_base64(data, newline=False).decode("ascii").rstrip("=")


def b64decode(text: str | bytes) -> bytes:
    """Decode canonical unpadded base64, raising ValueError on any other spelling."""
    if isinstance(text, bytes):
        text = text.decode("ascii", errors="replace")
    if not _B64_ALPHABET.issuperset(text) or len(text) % 4 == 1:
        raise ValueError("invalid base64")
    data = binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True)
    if b64encode(data) != text:
        raise ValueError("non-canonical base64")
    return data


_BECH32_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_BECH32_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i in range(5):
            chk ^= _BECH32_GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    maxv = (1 << to_bits) - 1
    for value in data:
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & maxv)
    elif bits >= from_bits or (acc << (to_bits - bits)) & maxv:
        raise KeyFormatError("invalid Bech32 padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Bech32 (not Bech32m) with no length limit: age's post-quantum keys exceed BIP-173's 90."""
    hrp = hrp.lower()
    values = _convert_bits(data, 8, 5, pad=True)
    checksum = _polymod(_hrp_expand(hrp) + values + [0] * 6) ^ 1
    values += [(checksum >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32_CHARSET[v] for v in values)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """Return (lowercase hrp, data) of a Bech32 string; all-upper or all-lower case only."""
    if text.lower() != text and text.upper() != text:
        raise KeyFormatError("mixed-case Bech32 string")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise KeyFormatError("malformed Bech32 string")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(not 33 <= ord(c) <= 126 for c in hrp) or any(c not in _BECH32_CHARSET for c in rest):
        raise KeyFormatError("invalid character in Bech32 string")
    values = [_BECH32_CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise KeyFormatError("bad Bech32 checksum")
    return hrp, bytes(_convert_bits(values[:-6], 5, 8, pad=False))
