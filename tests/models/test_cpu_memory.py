"""keep_freed_cpu_memory: after it, a large tensor comes from the reusable heap, not from fresh
mmap'ed pages (checked with glibc's own accounting, mallinfo2, in a fresh process)."""

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import ctypes
import torch
from models.masking.cpu_memory import keep_freed_cpu_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2


def mapped_afresh() -> bool:
    before = libc.mallinfo2().hblkhd
    stack = torch.empty(16_000_000)  # 64 MB, above glibc's largest mmap threshold
    mapped = libc.mallinfo2().hblkhd - before
    del stack
    return mapped >= 64_000_000


print(mapped_afresh(), keep_freed_cpu_memory(), mapped_afresh())
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


def _probe(**env) -> list[str]:
    """[mapped afresh before, keep_freed_cpu_memory(), mapped afresh after] in a fresh process."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env
    result = subprocess.run([sys.executable, "-c", _PROBE], check=False, cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.slow  # a fresh Python process with torch: seconds
@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_large_tensors_come_from_the_heap_once_freed_memory_is_kept():
    assert _probe() == ["True", "True", "False"]


@pytest.mark.slow  # a fresh Python process with torch: seconds
@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc >= 2.33 (mallinfo2)")
def test_malloc_settings_from_the_environment_are_left_alone():
    assert _probe(MALLOC_MMAP_THRESHOLD_="65536") == ["True", "False", "True"]
