"""Our own matmul kernels over bf16, int8 and int4 weights for x86 CPUs with AVX2 (``gemv.c``), built at first use.

Why: a decode step reads every weight once, so its time is the weight bytes over the memory bandwidth, if the kernel
keeps up. On a 2-core AVX2 EPYC (no native bf16) torch's one-row bf16 ``F.linear`` ran the 7B's decode at 1.78x
that floor and torchao's int4 CPU kernel at 6x, while llama.cpp ran both precisions faster (docs/backends.md). The
kernels here are plain loops of AVX2 FMAs over weights converted in registers (bf16: a shift; int4: llama.cpp's Q4_0
layout, a mask and a subtract), the output columns split over the cores with OpenMP (torch's own thread pool: the
library links ``libgomp.so.1`` by name, which resolves to the copy torch has loaded); they read the weights
once for a few input rows (decode steps, a speculative tree); from ``upcast.UPCAST_MIN_ROWS`` rows a GEMM on the fp32
weight is faster. The int8 kernel (``llava_accel.int8``) sums exact integer products of 7-bit inputs and int8
weights; on AVX2 it serves every row count (a prefill's 780 rows in 1.14-1.22x fbgemm's time); where the CPU has
AVX-512 VNNI or AMX, torch's int8 GEMM (oneDNN) sums the same integer products from ``I8_GEMM_MIN_ROWS`` rows on (780
rows of the 7B's MLP on a 2-core Xeon: 144 ms against our 499). Where the CPU has AVX-512 BF16, bf16 inputs meet the
bf16 weights in its dot-product instruction instead (``native_bf16()``), and with AVX-512 VNNI the int4 kernel reads
the weights in a blocked layout (``q4_blocks``: 16 output rows a line, one instruction multiplies 4 weights of each by
the same 4 inputs) and the int8 kernel 64 products an instruction (``LLAVA_ACCEL_GEMV=avx2`` keeps the AVX2 paths).

Built with the system C compiler (``$CC``, else ``cc``) into ``~/.cache/llava_accel/kernels/`` under a name keyed by
the source, the flags and the compiler, the first time they are needed (about a second). Where the CPU lacks AVX2,
FMA or F16C, no compiler is found, or ``LLAVA_ACCEL_GEMV=0``, ``unavailable_reason()`` says why and the callers keep
torch's kernels (and say so in ``describe()``). The library runs outside the GIL (ctypes releases it).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

from .cpuinfo import cpu_flags, cpu_vendor
from .errors import OptionError
from .metrics.mfu import cache_dir

SOURCE = Path(__file__).with_name("gemv.c")
FLAGS = ["-O3", "-mavx2", "-mfma", "-mf16c", "-fPIC", "-shared", "-fopenmp", "-Wall", "-Werror"]
NEEDS = ("avx2", "fma", "f16c")
# where the CPU has them, also bf16 x bf16 products in hardware (gemv_bf16_native); LLAVA_ACCEL_GEMV=avx2 leaves them
NATIVE_FLAGS, NATIVE_NEEDS = ["-mavx512f", "-mavx512vl", "-mavx512bf16"], ("avx512f", "avx512vl", "avx512_bf16")
VNNI_FLAGS, VNNI_NEEDS = ["-mavx512bw", "-mavx512vnni"], ("avx512bw", "avx512_vnni")  # the VNNI int4, int8 loops
BF16_MULTIPLE, I8_MULTIPLE, Q4_GROUP = 32, 32, 32  # the input width must be a multiple of these
Q4_BLOCK = 16  # int4, blocked layout: weight rows a block (gemv.c)
ENV = "LLAVA_ACCEL_GEMV"
# the kernels' prefetch of the weights (gemv.c): non-temporal where it measured faster (AMD Zen 2: the GEMV as fast,
# torch's ops after it 3x faster), to every cache level where it did not (a Xeon with AVX-512: the int8 GEMV at
# 16.9 GB/s non-temporal, 26.0 so); LLAVA_ACCEL_PREFETCH overrides (docs/backends.md)
PREFETCH_ENV, PREFETCH_HINTS = "LLAVA_ACCEL_PREFETCH", ("nta", "t0", "off")
I8_GEMM_MIN_ROWS = 32  # from here, where onednn_int8(): torch's int8 GEMM between our rounding and our scaling
ATTEND_MAX_QUERIES = 64  # more (a prefill): torch's SDPA, whose blocked kernel is faster there
_p, _i64, _int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int


def _build(compiler: str, flags: list[str]) -> Path | str:
    """The library built with ``flags`` (cached by source, flags and compiler), or why it could not be."""
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    key = hashlib.sha256("\0".join([SOURCE.read_text(), *flags, version]).encode()).hexdigest()[:16]
    path = cache_dir() / "kernels" / f"gemv-{key}.so"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:  # built aside, then renamed: no torn file
            built = Path(tmp) / path.name
            done = subprocess.run([compiler, *flags, "-o", str(built), str(SOURCE), "-lm"], capture_output=True,
                                  text=True, timeout=300)
            if done.returncode:
                return f"{compiler} failed on gemv.c: {done.stderr.strip().splitlines()[-1:]}"
            built.replace(path)
    return path


@lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded library, its path) or (None, why not)."""
    setting = os.environ.get(ENV, "1")
    if setting == "0":
        return None, f"{ENV}=0"
    missing = [f for f in NEEDS if f not in cpu_flags()]
    if missing:
        return None, f"this CPU lacks {', '.join(missing)}"
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        return None, f"no C compiler ({os.environ.get('CC', 'cc')}) on PATH"
    native = setting != "avx2" and all(f in cpu_flags() for f in NATIVE_NEEDS)
    try:
        vnni = VNNI_FLAGS if all(f in cpu_flags() for f in VNNI_NEEDS) else []
        path = _build(compiler, FLAGS + NATIVE_FLAGS + vnni) if native else None
        if not isinstance(path, Path):  # not asked, or a compiler too old for AVX-512 BF16: the AVX2 kernels alone
            path = _build(compiler, FLAGS)
        if not isinstance(path, Path):
            return None, path
        lib = ctypes.CDLL(str(path))
    except (OSError, subprocess.SubprocessError) as e:
        return None, f"building gemv.c failed: {e}"
    lib.set_prefetch.argtypes, lib.set_prefetch.restype = [_int], None
    lib.set_prefetch(PREFETCH_HINTS.index(prefetch_hint()))
    lib.get_prefetch.argtypes, lib.get_prefetch.restype = [], _int
    lib.q4_vnni.argtypes, lib.q4_vnni.restype = [], _int
    lib.gemv_bf16.argtypes = [_p, _p, _p, _i64, _i64, _i64, _int]
    lib.gemv_q4.argtypes = [_p, _p, _int, _p, _int, _p, _p, _p, _p, _p, _i64, _i64, _i64, _int]
    lib.q4_dequantize.argtypes = [_p, _p, _int, _p, _i64, _i64, _int]
    lib.gemm_i8.argtypes = [_p, _p, _p, _p, _p, _p, _p, _p, _i64, _i64, _i64, _int]
    lib.quantize_i8_rows.argtypes = [_p, _p, _p, _p, _i64, _i64]
    lib.scale_i8.argtypes = [_p, _p, _p, _p, _p, _p, _i64, _i64, _int]
    lib.attend.argtypes = [_p, _p, _p, _int, _i64, _i64, _p, _p, _p, _i64, _i64, _i64, _i64, _i64, ctypes.c_float,
                           _int]
    functions = [lib.gemv_bf16, lib.gemv_q4, lib.q4_dequantize, lib.gemm_i8, lib.quantize_i8_rows, lib.scale_i8,
                 lib.attend]
    if hasattr(lib, "gemv_bf16_native"):
        lib.gemv_bf16_native.argtypes = [_p, _p, _p, _i64, _i64, _i64, _int]
        functions.append(lib.gemv_bf16_native)
    for function in functions:
        function.restype = None
    return lib, str(path)


def prefetch_hint() -> str:
    """How the kernels prefetch the weights they stream: ``LLAVA_ACCEL_PREFETCH`` if set, else by CPU vendor."""
    asked = os.environ.get(PREFETCH_ENV)
    if asked is None:
        return "nta" if cpu_vendor() == "AuthenticAMD" else "t0"
    if asked not in PREFETCH_HINTS:
        raise OptionError(f"{PREFETCH_ENV}={asked!r} is not one of {', '.join(PREFETCH_HINTS)}; unset it for this "
                          "CPU's default")
    return asked


def native_bf16() -> bool:
    """Whether bf16 inputs are multiplied by bf16 weights in hardware here (AVX-512 BF16), not converted to fp32."""
    lib = _library()[0]
    return lib is not None and hasattr(lib, "gemv_bf16_native")


def unavailable_reason() -> str | None:
    """None when the kernels run here, else why not (one line)."""
    lib, why = _library()
    return None if lib is not None else why


def describe() -> str:
    """Which kernels run matmuls of bf16, int8 and int4 weights here, in words; the prefetch hint as the library
    holds it, which a later change of the environment does not touch."""
    lib, where = _library()
    if lib is None:
        return f"torch's kernels ({where})"
    isa = [name for name, has in (("AVX-512 BF16", native_bf16()), ("AVX-512 VNNI", lib.q4_vnni())) if has]
    return (f"our {' and '.join([', '.join(isa), 'AVX2'] if isa else ['AVX2'])} kernels ({Path(where).name}, "
            f"prefetch {PREFETCH_HINTS[lib.get_prefetch()]})")


def _rows(x: torch.Tensor, k: int, bf16: bool = False) -> tuple[torch.Tensor, int]:
    """(x as contiguous rows of ``k``, in fp32 or, where ``bf16``, as they are (bf16), the number of rows)."""
    rows = x.reshape(-1, k) if bf16 else x.reshape(-1, k).to(torch.float32)
    return rows.contiguous(), rows.shape[0]


def bf16_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` in fp32 for a contiguous bf16 ``weight`` (n, k), ``k`` a multiple of 32; ``x`` (..., k) in any
    float dtype. The result is fp32; the caller rounds it to its dtype. bf16 ``x`` on a CPU with AVX-512 BF16: the
    hardware's bf16 products (7-8 % faster on the 7B's projections at 2 threads, and closer to the exact sums)."""
    n, k = weight.shape
    lib, native = _library()[0], x.dtype == torch.bfloat16 and native_bf16()
    rows, m = _rows(x, k, bf16=native)
    y = torch.empty(m, n, dtype=torch.float32)
    kernel = lib.gemv_bf16_native if native else lib.gemv_bf16
    kernel(weight.data_ptr(), rows.data_ptr(), y.data_ptr(), m, n, k, torch.get_num_threads())
    return y.view(*x.shape[:-1], n)


def q4_linear(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, blocked: bool = False,
              bf16_out: bool = False) -> torch.Tensor:
    """``x @ W.T`` in fp32 (``bf16_out``: rounded to bf16, as ``.to(torch.bfloat16)`` would) for W in Q4_0 layout:
    ``packed`` uint8 (n, k/2), ``scales`` fp16 (n, k/32), or in the blocked layout (``q4_blocks``) where ``blocked``.
    ``x`` is rounded to int8 per group of 32 first (Q8_0, as llama.cpp does), so the result is that of the rounded
    ``x``. bf16 ``x`` and the bf16 result are read and written by the kernel itself: in a decode step each torch op
    after a weight stream starts with cold caches, and those two conversions cost the 7B 5 ms a token."""
    n, k = packed.shape[0], packed.shape[1] * 2
    x16 = x.dtype == torch.bfloat16
    rows, m = _rows(x, k, bf16=x16)
    y = torch.empty(m, n, dtype=torch.float32)
    y16 = torch.empty(m, n, dtype=torch.bfloat16) if bf16_out else None
    xq, groups = torch.empty(m, k, dtype=torch.int8), m * k // Q4_GROUP  # x in Q8_0: int8, scales, sums
    dx, xc = torch.empty(groups, dtype=torch.float32), torch.empty(groups, dtype=torch.int32)
    _library()[0].gemv_q4(packed.data_ptr(), scales.data_ptr(), int(blocked), rows.data_ptr(), int(x16),
                          xq.data_ptr(), dx.data_ptr(), xc.data_ptr(), y.data_ptr(),
                          None if y16 is None else y16.data_ptr(), m, n, k, torch.get_num_threads())
    return (y if y16 is None else y16).view(*x.shape[:-1], n)


def q4_blocked_kernel() -> bool:
    """Whether the int4 kernel here reads the blocked layout (``q4_blocks``): with AVX-512 VNNI."""
    lib = _library()[0]
    return lib is not None and bool(lib.q4_vnni())


def q4_blocks(t: torch.Tensor) -> torch.Tensor:
    """A Q4_0 ``packed`` (n, k/2) or ``scales`` (n, k/32) tensor in the blocked layout, the same shape: per block of
    ``Q4_BLOCK`` rows, the packed bytes' 4-byte words (the scales) transposed, so that one 64-byte line holds the
    same 4 (1) of each row of the block; ``n`` a multiple of ``Q4_BLOCK`` (gemv.c says why)."""
    n, width = t.shape
    words = t.view(torch.int32) if t.dtype == torch.uint8 else t
    return words.reshape(n // Q4_BLOCK, Q4_BLOCK, -1).transpose(1, 2).contiguous().view(t.dtype).view(n, width)


def i8_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, sums: torch.Tensor) -> torch.Tensor:
    """``x @ W.T`` in fp32 for W = ``weight`` (int8 (n, k), ``k`` a multiple of 32) times ``scales`` (fp32 (n,), per
    row), ``sums`` its rows' sums (int32 (n,)); any number of rows. Each row of ``x`` is rounded to 7-bit integers
    with a zero point first (fbgemm's dynamic quantisation, per row), so the result is that of the rounded ``x``."""
    n, k = weight.shape
    x32, m = _rows(x, k)
    y = torch.empty(m, n, dtype=torch.float32)
    xq, dx, xz = torch.empty(m, k, dtype=torch.uint8), torch.empty(m), torch.empty(m, dtype=torch.int32)
    lib, threads = _library()[0], torch.get_num_threads()
    if m >= I8_GEMM_MIN_ROWS and onednn_int8():
        lib.quantize_i8_rows(x32.data_ptr(), xq.data_ptr(), dx.data_ptr(), xz.data_ptr(), m, k)
        dots = torch._int_mm(xq.view(torch.int8), weight.t())  # 0..127 are the same bytes as int8; exact int32 sums
        lib.scale_i8(dots.data_ptr(), scales.data_ptr(), sums.data_ptr(), dx.data_ptr(), xz.data_ptr(), y.data_ptr(),
                     m, n, threads)
    else:
        lib.gemm_i8(weight.data_ptr(), scales.data_ptr(), sums.data_ptr(), x32.data_ptr(), xq.data_ptr(),
                    dx.data_ptr(), xz.data_ptr(), y.data_ptr(), m, n, k, threads)
    return y.view(*x.shape[:-1], n)


def onednn_int8() -> bool:
    """Whether torch's int8 GEMM (oneDNN) has the CPU's int8 dot products (AVX-512 VNNI, AMX) to run on; there it
    is faster than ours from ``I8_GEMM_MIN_ROWS`` rows (a prefill), on the same integers."""
    return any(f in cpu_flags() for f in ("avx512_vnni", "amx_int8")) and os.environ.get(ENV) != "avx2"


def q4_dequantize(packed: torch.Tensor, scales: torch.Tensor, blocked: bool = False) -> torch.Tensor:
    """The fp32 weight (n, k) of a Q4_0 ``packed``/``scales`` pair (in the blocked layout where ``blocked``)."""
    n, k = packed.shape[0], packed.shape[1] * 2
    w = torch.empty(n, k, dtype=torch.float32)
    _library()[0].q4_dequantize(packed.data_ptr(), scales.data_ptr(), int(blocked), w.data_ptr(), n, k,
                                torch.get_num_threads())
    return w


def attends(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> bool:
    """Whether ``attend`` takes this attention: a few queries per head (a decode step, a draft tree), bf16 or fp32
    keys and values on the CPU laid out as a cache (per head contiguous), as many key heads as query heads, a head
    width it handles, a boolean mask per query."""
    b, h, m, d = q.shape
    return (m <= ATTEND_MAX_QUERIES and k.dtype in (torch.bfloat16, torch.float32) and k.device.type == "cpu"
            and k.dtype == v.dtype and k.shape[1] == h and mask.dtype == torch.bool
            and mask.shape == (b, 1, m, k.shape[2]) and d % 8 == 0 and d <= 256 and k.stride() == v.stride()
            and k.stride()[2:] == (d, 1) and _library()[0] is not None)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of a few queries (``attends`` says when): softmax(q k^T * scale, where ``mask``) v, in fp32, for ``q``
    (batch, heads, m, d), ``k``/``v`` (batch, heads, n, d) views of a bf16 or fp32 cache, ``mask`` (batch, 1, m, n)
    bool. Each query is computed alone, so a decode step and a draft tree's verification give the same bits. Why:
    torch's CPU attention took 3.1 ms (bf16) and 1.7 ms (fp32) for the 7B's 32 heads over 830 keys, several times
    the bytes' floor, in each of the 32 layers of a decode step; this reads them once (docs/backends.md)."""
    b, h, m, d = q.shape
    n = k.shape[2]
    q32 = q.to(torch.float32).contiguous()
    keep = mask.reshape(b, m, n).to(torch.uint8).contiguous()
    out = torch.empty(b, h, m, d, dtype=torch.float32)
    scores = torch.empty(b, h, m, n, dtype=torch.float32)
    _library()[0].attend(q32.data_ptr(), k.data_ptr(), v.data_ptr(), int(k.dtype == torch.bfloat16), k.stride(0),
                         k.stride(1), keep.data_ptr(), out.data_ptr(), scores.data_ptr(), b, h, m, n, d, scale,
                         torch.get_num_threads())
    return out.to(q.dtype)
