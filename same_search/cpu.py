"""What this CPU's arithmetic units can do, from /proc/cpuinfo: the fast path is picked from it.

torch's int8 product (``_int_mm``) runs on VNNI or AMX where the CPU has them and is then the
fastest int8 product there is; without them it falls back to a scalar loop. Measured on a 2-core
AMD EPYC with avx2 and fma but no VNNI (2026-12-07, one thread): 3,200 rows of 256 int8 codes
against one query 12 to 14 ms with ``_int_mm``, 0.32 ms with numpy's int32 ``einsum``; a 512 x 128
by 128 x 5,000 product (the same-picture check of ten candidates) 605 ms, 26 ms in float32 BLAS.
On the Xeon with avx512_vnni and AMX ``_int_mm`` was the fastest of the three (index/int8_rows.py,
verify/matching.py). So the int8 products ask :data:`INT8_MATMUL` before they use it.
"""

from __future__ import annotations

from pathlib import Path

#: Flags of an int8 dot-product unit torch's ``_int_mm`` uses (AVX-512 VNNI, AVX-VNNI, AMX).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The first processor's flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def has_int8_dot(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has an int8 dot-product unit (module docstring)."""
    return bool(cpu_flags(cpuinfo) & INT8_DOT_FLAGS)


def has_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU has native bf16 arithmetic (AVX-512 BF16 or AMX)."""
    return bool(cpu_flags(cpuinfo) & {"avx512_bf16", "amx_bf16"})


#: Whether torch's int8 product is the fast one on this machine.
INT8_MATMUL = has_int8_dot()
