"""Every peer's first PCG64 outputs at once: numpy's ``SeedSequence`` and ``PCG64`` over arrays.

The schedule pass needs each peer's first few dozen raw outputs of
``PCG64(peer_stream(seed, i))``. Creating the generators one by one costs about 20 µs a peer
(hashing the seed sequence, building the bit generator): 0.2 s at 10,000 peers and 20 s at
1,000,000. Here the same arithmetic runs over arrays of all peers at once, which is why it
is written out instead of calling numpy: the seed sequence's hash (numpy's
``bit_generator.pyx``: ``hashmix``, ``mix``, ``mix_entropy``, ``generate_state``, all 32-bit
words with wrap-around) and PCG64's seeding and XSL-RR output (``pcg64.h``: 128-bit LCG
steps, here as pairs of 64-bit words). :func:`raw_outputs` is held to numpy's own generators
by the tests, and the schedule pass compares a few peers with numpy at run time.
"""

from __future__ import annotations

import numpy as np

# numpy/random/bit_generator.pyx
_INIT_A, _MULT_A = 0x43B0D7E5, 0x931E8875
_INIT_B, _MULT_B = 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R = 0xCA01F9DD, 0x4973F715
_XSHIFT = 16
_POOL = 4
_M32 = 0xFFFFFFFF
# numpy/random/src/pcg64/pcg64.h: PCG_DEFAULT_MULTIPLIER_128
_MUL_HI, _MUL_LO = np.uint64(0x2360ED051FC65DA4), np.uint64(0x4385DF649FCCF645)
_U32 = np.uint64(32)
_LOW = np.uint64(_M32)


def _words(value: int) -> list[int]:
    """numpy's ``_coerce_to_uint32_array`` of a non-negative int: 32-bit words, low first."""
    out = []
    while value:
        out.append(value & _M32)
        value >>= 32
    return out or [0]


class _Hash:
    """``hashmix`` with its running constant (the same sequence for every peer)."""

    def __init__(self, init: int, mult: int) -> None:
        self.const, self.mult = init, mult

    def __call__(self, value: np.ndarray) -> np.ndarray:
        value = value ^ np.uint32(self.const)
        self.const = (self.const * self.mult) & _M32
        value = value * np.uint32(self.const)
        return value ^ (value >> np.uint32(_XSHIFT))


def _mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    result: np.ndarray = x * np.uint32(_MIX_MULT_L) - y * np.uint32(_MIX_MULT_R)
    out: np.ndarray = result ^ (result >> np.uint32(_XSHIFT))
    return out


def seed_states(seed: int, keys: np.ndarray, words: int) -> np.ndarray:
    """``SeedSequence(seed, spawn_key=(key,)).generate_state(words, np.uint64)`` for every
    key at once: ``[len(keys), words]`` uint64. Keys must be below 2**32."""
    if seed < 0 or (len(keys) and int(keys.max()) > _M32) or (len(keys) and keys.min() < 0):
        raise ValueError("seeds must be >= 0 and keys below 2**32")
    n = len(keys)
    run = _words(seed)
    run += [0] * (_POOL - len(run))  # a spawned sequence pads its entropy to the pool size
    entropy = [np.full(n, w, dtype=np.uint32) for w in run] + [keys.astype(np.uint32)]
    hashmix = _Hash(_INIT_A, _MULT_A)
    pool = [hashmix(entropy[i]) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = _mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = _mix(pool[dst], hashmix(entropy[src]))
    out = _Hash(_INIT_B, _MULT_B)
    halves = [out(pool[i % _POOL]).astype(np.uint64) for i in range(2 * words)]
    return np.stack([halves[2 * j] | (halves[2 * j + 1] << _U32) for j in range(words)], axis=1)


def _mul_hi(a: np.ndarray, b: np.uint64) -> np.ndarray:
    """The high 64 bits of ``a * b`` (64 x 64 -> 128), from 32-bit halves."""
    a0, a1 = a & _LOW, a >> _U32
    b0, b1 = b & _LOW, b >> _U32
    p00, p01, p10 = a0 * b0, a0 * b1, a1 * b0
    mid = (p00 >> _U32) + (p01 & _LOW) + (p10 & _LOW)
    high: np.ndarray = a1 * b1 + (p01 >> _U32) + (p10 >> _U32) + (mid >> _U32)
    return high


def _step(
    hi: np.ndarray, lo: np.ndarray, inc_hi: np.ndarray, inc_lo: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One LCG step ``state * MULT + inc`` modulo 2**128."""
    new_hi = _mul_hi(lo, _MUL_LO) + hi * _MUL_LO + lo * _MUL_HI
    new_lo = lo * _MUL_LO
    out_lo = new_lo + inc_lo
    carry = (out_lo < new_lo).astype(np.uint64)
    return new_hi + inc_hi + carry, out_lo


def raw_outputs(seed: int, first_key: int, n: int, count: int) -> np.ndarray:
    """``[n, count]``: row ``i`` is ``PCG64(SeedSequence(seed, spawn_key=(first_key + i,)))
    .random_raw(count)``."""
    with np.errstate(over="ignore"):
        state = seed_states(seed, np.arange(first_key, first_key + n, dtype=np.int64), 4)
        init_hi, init_lo, seq_hi, seq_lo = (state[:, j] for j in range(4))
        # pcg_setseq_128_srandom_r: inc = (initseq << 1) | 1; step; state += initstate; step.
        inc_hi = (seq_hi << np.uint64(1)) | (seq_lo >> np.uint64(63))
        inc_lo = (seq_lo << np.uint64(1)) | np.uint64(1)
        zero = np.zeros(n, dtype=np.uint64)
        hi, lo = _step(zero, zero, inc_hi, inc_lo)
        lo2 = lo + init_lo
        hi = hi + init_hi + (lo2 < lo).astype(np.uint64)
        hi, lo = _step(hi, lo2, inc_hi, inc_lo)
        out = np.empty((n, count), dtype=np.uint64)
        for j in range(count):
            # XSL-RR: step, then rotate (hi ^ lo) right by the top 6 bits.
            hi, lo = _step(hi, lo, inc_hi, inc_lo)
            value, rot = hi ^ lo, hi >> np.uint64(58)
            out[:, j] = (value >> rot) | (value << ((np.uint64(64) - rot) & np.uint64(63)))
    return out
