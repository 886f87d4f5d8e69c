"""JAX's persistent compilation cache, on for every `mslam` command and the test suite.

A compiled train step is reused by any later process that compiles the same program (a restart,
a re-run of the demo, an evaluation after training), so only the first run pays XLA's compile.

Directory: `directory` if given, else $MSLAM_JAX_CACHE, else `default` (a command's own cache, such
as the demo's OUT/jax_cache), else $JAX_COMPILATION_CACHE_DIR, else ~/.cache/mslam_jax/jax_cache.
MSLAM_JAX_CACHE=off (or an empty string) leaves the cache off.

Before JAX is imported, `enable` only sets JAX's environment variables (so a command that never
touches JAX, such as `mslam data languages`, does not pay for importing it, and subprocesses
inherit the cache); after, it updates jax.config as well.

The CPU compiler and allocator settings every command uses live in `cpu_host`.
"""
import logging
import os
import sys

ENV_VAR = "MSLAM_JAX_CACHE"
DEFAULT_DIRECTORY = os.path.join("~", ".cache", "mslam_jax", "jax_cache")
# Our CPU programs compile in a fraction of a second (small evaluation functions) to tens of
# seconds (train steps); JAX's default threshold (1 s) would recompile the small ones every time.
MIN_COMPILE_TIME_SECS = 0.1
_OFF = ("", "off", "none", "0", "false")


def resolve_directory(directory: str | None = None, default: str | None = None) -> str | None:
  """The cache directory to use, or None when the cache is switched off."""
  if directory is None:
    directory = os.environ.get(ENV_VAR)
    if directory is None:
      directory = default or os.environ.get("JAX_COMPILATION_CACHE_DIR") or DEFAULT_DIRECTORY
  if directory.strip().lower() in _OFF:
    return None
  return os.path.abspath(os.path.expanduser(directory))


def enable(directory: str | None = None, min_compile_time_secs: float = MIN_COMPILE_TIME_SECS,
           default: str | None = None) -> str | None:
  """Turns the persistent cache on (idempotent); returns its directory, or None when off."""
  resolved = resolve_directory(directory, default)
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
