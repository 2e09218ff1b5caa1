"""The crash test's transactions, shared by its writer process and its checker."""

import random

MIB = 1 << 20


def transaction(seed: int, k: int) -> list[tuple[str, int, bytes]]:
    """Transaction `k`: 1-3 writes of up to 20 kB inside 4.5 MiB, or now and then a
    truncation to somewhere in 3-4.5 MiB."""
    rng = random.Random(f"{seed}:{k}")
    if rng.random() < 0.05:
        return [("t", rng.randrange(3 * MIB, 4 * MIB + MIB // 2), b"")]
    ops = []
    for _ in range(rng.randint(1, 3)):
        data = f"[{seed}:{k}]".encode() * rng.randint(1, 1500)
        ops.append(("w", rng.randrange(0, 4 * MIB + MIB // 2), data))
    return ops


def apply(state: bytearray, ops: list[tuple[str, int, bytes]]) -> None:
    for kind, offset, data in ops:
        if kind == "t":
            del state[offset:]
            state.extend(bytes(offset - len(state)))
        else:
            if len(state) < offset:
                state.extend(bytes(offset - len(state)))
            state[offset : offset + len(data)] = data
