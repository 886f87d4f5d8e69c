"""JAX's persistent compilation cache, on for every `mslam` command and the test suite.

A compiled train step is reused by any later process that compiles the same program (a restart,
a re-run of the demo, an evaluation after training), so only the first run pays XLA's compile.

Directory: `directory` if given, else $MSLAM_JAX_CACHE, else $JAX_COMPILATION_CACHE_DIR, else
~/.cache/mslam_jax/jax_cache. MSLAM_JAX_CACHE=off (or an empty string) leaves the cache off.

Before JAX is imported, `enable` only sets JAX's environment variables (so a command that never
touches JAX, such as `mslam data languages`, does not pay for importing it, and subprocesses
inherit the cache); after, it updates jax.config as well.

`tune_cpu_compiler` lowers LLVM's optimisation level on hosts without an accelerator: on the demo's
joint step it cut XLA's CPU compile by 15 % (42.7 s -> 36.5 s) with the step no slower (the step's
time sits in matmul library calls, not in LLVM-generated loops; benchmarks/README.md).
"""
import importlib.util
import logging
import os
import sys

ENV_VAR = "MSLAM_JAX_CACHE"
DEFAULT_DIRECTORY = os.path.join("~", ".cache", "mslam_jax", "jax_cache")
# Our CPU programs compile in a fraction of a second (small evaluation functions) to tens of
# seconds (train steps); JAX's default threshold (1 s) would recompile the small ones every time.
MIN_COMPILE_TIME_SECS = 0.1
_OFF = ("", "off", "none", "0", "false")
CPU_COMPILER_FLAGS = ("--xla_backend_optimization_level=1",)
# Where one of these is installed, XLA_FLAGS also reach an accelerator compiler (the GPU backend
# reads the same optimisation level for its kernels): leave them alone there.
_ACCELERATOR_MODULES = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin", "jax_rocm7_plugin",
                        "libtpu")


def resolve_directory(directory: str | None = None) -> str | None:
  """The cache directory to use, or None when the cache is switched off."""
  if directory is None:
    directory = os.environ.get(ENV_VAR)
    if directory is None:
      directory = os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_DIRECTORY
  if directory.strip().lower() in _OFF:
    return None
  return os.path.abspath(os.path.expanduser(directory))


def enable(directory: str | None = None, min_compile_time_secs: float = MIN_COMPILE_TIME_SECS) -> str | None:
  """Turns the persistent cache on (idempotent); returns its directory, or None when off."""
  resolved = resolve_directory(directory)
  if resolved is None:
    return None
  os.makedirs(resolved, exist_ok=True)
  os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "true"
  os.environ["JAX_COMPILATION_CACHE_DIR"] = resolved
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(min_compile_time_secs)
  if "jax" in sys.modules:
    import jax  # pylint: disable=g-import-not-at-top
    if jax.config.jax_compilation_cache_dir not in (None, resolved):
      # JAX opens its cache at the first compile; a later change of directory needs a reset.
      from jax._src import compilation_cache as jax_cache  # pylint: disable=g-import-not-at-top
      jax_cache.reset_cache()
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", resolved)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", min_compile_time_secs)
  logging.debug("JAX persistent compilation cache: %s", resolved)
  return resolved


def _cpu_only_host() -> bool:
  platforms = os.environ.get("JAX_PLATFORMS", "").strip().lower()
  return platforms == "cpu" or (not platforms and not any(
      importlib.util.find_spec(name) is not None for name in _ACCELERATOR_MODULES))


def cpu_compiler_flags(xla_flags: str | None) -> str:
  """`xla_flags` plus those of CPU_COMPILER_FLAGS it does not set, on a CPU-only host (JAX_PLATFORMS=cpu,
  or no accelerator plugin installed); `xla_flags` unchanged elsewhere."""
  flags = xla_flags or ""
  if not _cpu_only_host():
    return flags
  missing = [f for f in CPU_COMPILER_FLAGS if f.split("=")[0] not in flags]
  return " ".join([flags] + missing).strip()


def tune_cpu_compiler() -> None:
  """Applies `cpu_compiler_flags` to this process' XLA_FLAGS (and so to its subprocesses'). Call
  before JAX starts its backend: XLA reads XLA_FLAGS once."""
  flags = cpu_compiler_flags(os.environ.get("XLA_FLAGS"))
  if flags:
    os.environ["XLA_FLAGS"] = flags
