"""The CPU-only host's compiler flags and allocator settings: added where they help, never over
the user's own."""
import os
import subprocess
import sys

import pytest

from mslam_jax import cpu_host


def test_compiler_flags_added_on_cpu_hosts_and_never_override_the_user(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert cpu_host.compiler_flags(None) == "--xla_backend_optimization_level=1"
  assert cpu_host.compiler_flags("--xla_dump_to=/tmp/d") == "--xla_dump_to=/tmp/d --xla_backend_optimization_level=1"
  assert cpu_host.compiler_flags("--xla_backend_optimization_level=3") == "--xla_backend_optimization_level=3"


def test_compiler_flags_left_alone_where_an_accelerator_may_compile(monkeypatch):
  # The GPU backend reads the same optimisation level for its own kernels.
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert cpu_host.compiler_flags("--a") == "--a"
  monkeypatch.setenv("JAX_PLATFORMS", "")
  monkeypatch.setattr(cpu_host.importlib.util, "find_spec",
                      lambda name: object() if name == "jax_cuda12_plugin" else None)
  assert cpu_host.compiler_flags(None) == ""


def test_tune_compiler_sets_the_environment(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  cpu_host.tune_compiler()
  assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=1"


# Allocates and frees 128 MiB five times after a first round, and prints whether the allocator was
# tuned and the page faults those five rounds took.
_FAULTS = """
import resource
import numpy as np
from mslam_jax import cpu_host
tuned = cpu_host.tune_allocator()
np.ones(2**25, np.float32).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  np.ones(2**25, np.float32).sum()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(**env) -> tuple[str, int]:
  base = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != cpu_host.ALLOCATOR_ENV_VAR}
  out = subprocess.run([sys.executable, "-c", _FAULTS], env={**base, "JAX_PLATFORMS": "cpu", **env},
                       capture_output=True, text=True, check=True).stdout.split()
  return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tuned_allocator_keeps_freed_pages_mapped():
  tuned, faults_tuned = _faults()
  default, faults_default = _faults(**{cpu_host.ALLOCATOR_ENV_VAR: "default"})
  assert (tuned, default) == ("True", "False")
  # glibc's defaults map each 128 MiB afresh (32,768 pages, fewer with transparent huge pages);
  # tuned, the second allocation reuses the first one's pages.
  assert faults_default > 100
  assert faults_tuned * 10 < faults_default


def test_allocator_left_alone_where_the_user_or_an_accelerator_decides(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
  assert cpu_host.tune_allocator() is False
  monkeypatch.delenv("MALLOC_ARENA_MAX")
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=0")
  assert cpu_host.tune_allocator() is False
  monkeypatch.delenv("GLIBC_TUNABLES")
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert cpu_host.tune_allocator() is False
