"""Counter-based noise for the fused path: the uniform of element i is a pure function of (key, i).

Two rounds of Wellons' "lowbias32" integer hash, each after XOR with one half of the key. A compiled
kernel then draws the noise where it uses it (32-bit integer ops vectorise on CPUs), and backward draws
it again instead of storing a K-stack of uniforms (models/masking/fused_sampling.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

_MIX1 = 0x7FEB352D
_MIX2 = 0x846CA68B - 2**32  # as signed int32 (torch's int32 arithmetic wraps)


def _shift_right(x: Tensor, bits: int) -> Tensor:
    """Logical right shift of int32 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (32 - bits)) - 1)


def _hash32(x: Tensor) -> Tensor:
    x = x ^ _shift_right(x, 16)
    x = x * _MIX1
    x = x ^ _shift_right(x, 15)
    x = x * _MIX2
    return x ^ _shift_right(x, 16)


def counter_uniform(key: Tensor, shape: tuple[int, ...], start: int = 0) -> Tensor:
    """Uniforms in [0, 1) with 24 random bits; element i (row-major) from (key, start + i): [*shape].

    key: int32 tensor [2] (a tensor, so that compiled kernels do not specialise on its value).
    The counter c = start + i has any size: its low 32 bits go through the hash, and its high bits
    (c >> 32, zero below 2^32) perturb the second key half, so no stretch of noise ever repeats.
    Below 2^31 the counter is an int32 `arange` (what a kernel computes fastest).
    """
    return uniform_of(counter_bits(key, shape, start))


def counter_bits(key: Tensor, shape: tuple[int, ...], start: int = 0) -> Tensor:
    """The 24 random bits behind counter_uniform, as int32 integers in [0, 2^24): [*shape]."""
    count = 1
    for size in shape:
        count *= size
    if start + count <= 2**31:
        return hashed_bits(torch.arange(start, start + count, dtype=torch.int32, device=key.device), key).view(shape)
    index = torch.arange(start, start + count, dtype=torch.int64, device=key.device)
    low = (((index + 2**31) & 0xFFFFFFFF) - 2**31).to(torch.int32)  # c mod 2^32, as signed int32
    high = _hash32((index >> 32).to(torch.int32))  # 0 where c < 2^32 (the hash maps 0 to 0)
    return _shift_right(_hash32(_hash32(low ^ key[0]) ^ (key[1] ^ high)), 8).view(shape)



def hashed_bits(counter: Tensor, key: Tensor) -> Tensor:
    """int32 counters below 2^31 -> their 24 random bits (the top bits of the hash): same shape."""
    return _shift_right(_hash32(_hash32(counter ^ key[0]) ^ key[1]), 8)


def uniform_of(bits: Tensor) -> Tensor:
    return bits.to(torch.float32) * (1.0 / (1 << 24))


def keyed_uniforms(key: Tensor, weight_shape: torch.Size, num_samples: int) -> Tensor:
    """The uniforms keyed_masked_weight_samples draws for `key`, materialised (for tests): [K, *S]."""
    if len(weight_shape) == 2:
        return counter_uniform(key, (num_samples, weight_shape[1], weight_shape[0])).transpose(-1, -2)
    return counter_uniform(key, (num_samples, *weight_shape))


def draw_keys(count: int, device, generator: torch.Generator | None = None) -> list[Tensor]:
    """Fresh int32 [2] keys from torch's CPU generator (so torch.manual_seed repeats a run), moved
    to `device` in one copy."""
    keys = torch.randint(-(2**31), 2**31 - 1, (count, 2), dtype=torch.int32, generator=generator)
    return list(keys.to(device).unbind(0))
