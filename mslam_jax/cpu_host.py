"""Settings for XLA on a host without an accelerator, applied by every `mslam` command at start.

`tune_compiler` lowers LLVM's optimisation level: on the demo's joint step it cut XLA's CPU compile
by 15 % (42.7 s -> 36.5 s) with the step no slower (the step's time sits in matmul library calls,
not in LLVM-generated loops).

`tune_allocator` keeps glibc's malloc from handing memory back to the kernel between steps. XLA's
CPU runtime allocates a program's buffers (hundreds of MB for a train step) with malloc at every
call and frees them after; glibc maps allocations above its mmap threshold (32 MiB at most) afresh
and unmaps its per-thread arenas' heaps once empty, so every step faults all those pages in again:
4.9 million page faults in 22 of the demo's joint steps, a 0.78 s step of which the kernel took
0.3 s. One arena, no mmap and no trimming keep the pages mapped: 0.45 s a step, for a peak
resident size of 4.3 GB instead of 2.8 GB (benchmarks/README.md, twenty-fifth pass).

Both leave an accelerator host alone (the GPU backend reads the same optimisation level; device
memory is not malloc's, and a data pipeline's many threads want glibc's per-thread arenas) and
never override what the user set: XLA_FLAGS that name the level, MALLOC_* variables or glibc
malloc tunables. MSLAM_JAX_MALLOC=default keeps glibc's defaults.
"""
import ctypes
import ctypes.util
import importlib.util
import logging
import os
import platform

COMPILER_FLAGS = ("--xla_backend_optimization_level=1",)
# Where one of these is installed, XLA_FLAGS also reach an accelerator compiler: leave them alone.
_ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
                        "libtpu")
ALLOCATOR_ENV_VAR = "MSLAM_JAX_MALLOC"
# mallopt(3) parameters, and the values set: one arena, nothing served by mmap, trimming only past
# 2 GiB of free memory at the heap's top (mallopt takes an int).
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
ALLOCATOR_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
_USER_MALLOC_VARS = ("MALLOC_ARENA_MAX", "MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                     "MALLOC_TOP_PAD_")


def cpu_only_host() -> bool:
  """JAX_PLATFORMS=cpu, or no accelerator plugin installed."""
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  return platforms == "cpu" or (not platforms and not any(
      importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES))


def compiler_flags(xla_flags: str | None) -> str:
  """`xla_flags` plus those of COMPILER_FLAGS it does not set, on a CPU-only host; `xla_flags`
  unchanged elsewhere."""
  flags = xla_flags or ""
  if not cpu_only_host():
    return flags
  missing = [f for f in COMPILER_FLAGS if f.split("=")[0] not in flags]
  return " ".join([flags] + missing).strip()


def tune_compiler() -> None:
  """Applies `compiler_flags` to this process' XLA_FLAGS (and so to its subprocesses'). Call
  before JAX starts its backend: XLA reads XLA_FLAGS once."""
  flags = compiler_flags(os.environ.get("XLA_FLAGS"))
  if flags:
    os.environ["XLA_FLAGS"] = flags


def _user_set_malloc() -> bool:
  return (any(name in os.environ for name in _USER_MALLOC_VARS)
          or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""))


def tune_allocator() -> bool:
  """Sets ALLOCATOR_SETTINGS with mallopt(3) on a CPU-only glibc host; True when it did. Call before
  JAX (or TensorFlow) starts threads: a thread that has already allocated keeps its own arena."""
  if os.environ.get(ALLOCATOR_ENV_VAR, "").strip().lower() in ("default", "off", "0", "false"):
    return False
  if _user_set_malloc() or not cpu_only_host() or platform.libc_ver()[0] != "glibc":
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
  except (OSError, AttributeError):
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  applied = all(mallopt(param, value) == 1 for param, value in ALLOCATOR_SETTINGS)
  logging.debug("glibc malloc tuned for XLA's CPU runtime: %s", applied)
  return applied
