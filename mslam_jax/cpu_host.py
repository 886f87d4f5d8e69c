"""Settings for XLA on a host without an accelerator, applied by every `mslam` command at start.

`tune_compiler` lowers LLVM's optimisation level: on the demo's joint step it cut XLA's CPU compile
by 15 % (42.7 s -> 36.5 s) with the step no slower (the step's time sits in matmul library calls,
not in LLVM-generated loops).

`allocator_environment` puts tcmalloc under the process. XLA's CPU runtime allocates a program's
buffers (hundreds of MB for a train step) with malloc at every call and frees them after; glibc maps
allocations above its mmap threshold (32 MiB at most) afresh and unmaps its per-thread arenas'
heaps once empty, so every step faults all those pages in again: 17 million page faults in 80 of
the demo's pre-training steps, a third of the CPU time in the kernel. tcmalloc keeps freed memory
in its caches: 1.3 million faults, and the demo's joint step 1.7 times as fast (0.42 s against
0.70 s; benchmarks/README.md, twenty-fifth pass). glibc's own knobs (one arena, no mmap, no
trimming) took the faults only part of the way down, slowed XLA's compile and grew the heap over a
long run. It takes effect at a process' start (LD_PRELOAD), so `cli.entry` starts the command again
under it (`restart_under_allocator`); where the library is not installed (Debian/Ubuntu:
libtcmalloc-minimal4) everything runs as before.

`cpu_slots` splits the host's cores between processes that run side by side (the learning
benchmark's seeds; `pinned_command` starts one on its share): pinned each to its own core, two
fine-tuning jobs on 2 cores ran 11 % faster than with both processes' threads on both cores
(benchmarks/README.md, forty-first pass).

`bf16_matmul_units` tells whether the CPU multiplies bfloat16 matrices in hardware (AMX-BF16 or
AVX512-BF16), for
`matmul_precision.precision = "auto"` (mslam_jax/layers/matmul.py).

The first two leave an accelerator host alone (the GPU backend reads the same optimisation level;
a train step's buffers live in device memory there, not malloc's, and the allocator was measured on
CPU hosts only) and never override what the user set: XLA_FLAGS that name the level, or an
LD_PRELOAD of their own. MSLAM_JAX_MALLOC=default keeps glibc's malloc.
"""
import ctypes.util
import functools
import importlib.util
import logging
import os
import sys

COMPILER_FLAGS = ("--xla_backend_optimization_level=1",)
# Where one of these is installed, XLA_FLAGS also reach an accelerator compiler: leave them alone.
_ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
                        "libtpu")
ALLOCATOR_ENV_VAR = "MSLAM_JAX_MALLOC"
ALLOCATOR_LIBRARY = "tcmalloc_minimal"
# CPU flags (Linux /proc/cpuinfo) of bfloat16 matrix units that XLA:CPU's bf16-in, f32-out dots use:
# AMX-BF16 (Intel Sapphire Rapids) 3-5 times float32's speed, AVX512-BF16 alone (AMD Zen 4) about twice
# (benchmarks/README.md, thirty-fifth and thirty-ninth passes).
BF16_MATMUL_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_only_host(environ=None) -> bool:
  """JAX_PLATFORMS=cpu, or no accelerator plugin installed."""
  platforms = (os.environ if environ is None else environ).get("JAX_PLATFORMS", "").strip().lower()
  return platforms == "cpu" or (not platforms and not any(
      importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES))


def cpu_slots(processes: int, cpus=None) -> list[frozenset[int]] | None:
  """`processes` disjoint sets of this process' CPUs (`cpus`, default its affinity), as even as they
  divide, to pin processes that run side by side; None for fewer than 2 processes, fewer CPUs than
  processes, or a system without CPU affinity (macOS)."""
  if cpus is None:
    if not hasattr(os, "sched_getaffinity"):
      return None
    cpus = os.sched_getaffinity(0)
  cpus = sorted(cpus)
  if processes < 2 or len(cpus) < processes:
    return None
  bounds = [round(i * len(cpus) / processes) for i in range(processes + 1)]
  return [frozenset(cpus[a:b]) for a, b in zip(bounds, bounds[1:])]


# Pins itself, then becomes the command: the command's threads and subprocesses inherit the CPU set.
_PIN_THEN_EXEC = ("import os, sys; os.sched_setaffinity(0, [int(c) for c in sys.argv[1].split(',')]); "
                  "os.execvp(sys.argv[2], sys.argv[2:])")


def pinned_command(command: list[str], cpus) -> list[str]:
  """`command` started on the CPU set `cpus` (one of `cpu_slots`). A small Python process pins
  itself and execs the command, rather than subprocess' `preexec_fn`: that runs Python code in a
  forked copy of a multithreaded parent (JAX warns that it can deadlock) and rules out vfork."""
  return [sys.executable, "-c", _PIN_THEN_EXEC, ",".join(str(c) for c in sorted(cpus))] + list(command)


@functools.lru_cache(maxsize=None)
def bf16_matmul_units(cpuinfo: str = "/proc/cpuinfo") -> bool:
  """Whether this CPU has a bfloat16 matrix unit of BF16_MATMUL_FLAGS (False where it cannot tell)."""
  try:
    with open(cpuinfo, encoding="utf-8", errors="replace") as f:
      for line in f:
        if line.startswith("flags"):
          return any(flag in line.split() for flag in BF16_MATMUL_FLAGS)
  except OSError:
    pass
  return False


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


def allocator_library() -> str | None:
  """tcmalloc's shared library (its soname, which the dynamic loader finds), or None where not installed."""
  return ctypes.util.find_library(ALLOCATOR_LIBRARY)


def allocator_environment(environ=None) -> dict | None:
  """`environ` (default os.environ) with tcmalloc in LD_PRELOAD, for a command to start again under;
  None where nothing is to change: an accelerator host, MSLAM_JAX_MALLOC=default, an LD_PRELOAD
  already set (by the user, or by an earlier start), a platform without LD_PRELOAD, or tcmalloc not
  installed."""
  environ = dict(os.environ if environ is None else environ)
  if environ.get(ALLOCATOR_ENV_VAR, "").strip().lower() in ("default", "off", "0", "false"):
    return None
  if environ.get("LD_PRELOAD") or not sys.platform.startswith("linux") or not cpu_only_host(environ):
    return None
  library = allocator_library()
  if library is None:
    return None
  environ["LD_PRELOAD"] = library
  return environ


def restart_under_allocator(argv: list[str]) -> None:
  """Replaces this process by `argv` (its argv[0] the executable) under `allocator_environment`;
  returns where that changes nothing, or where the start fails (the caller goes on, on glibc's
  malloc)."""
  environ = allocator_environment()
  if environ is None:
    return
  try:
    os.execve(argv[0], argv, environ)
  except OSError as e:
    logging.getLogger(__name__).warning("could not start under %s: %s", environ["LD_PRELOAD"], e)
