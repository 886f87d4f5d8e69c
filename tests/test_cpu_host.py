"""The CPU-only host's compiler flags and allocator settings: added where they help, never over
the user's own."""
import os
import subprocess
import sys

import pytest

from mslam_jax import cli
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


# Allocates and frees 128 MiB five times after a first round; prints the page faults those five took.
_FAULTS = """
import resource
import numpy as np
np.ones(2**25, np.float32).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  np.ones(2**25, np.float32).sum()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(environ: dict) -> int:
  out = subprocess.run([sys.executable, "-c", _FAULTS], env=environ, capture_output=True, text=True, check=True)
  return int(out.stdout.split()[-1])


def _plain_environment() -> dict:
  return {**{k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", cpu_host.ALLOCATOR_ENV_VAR)},
          "JAX_PLATFORMS": "cpu"}


@pytest.mark.skipif(cpu_host.allocator_library() is None, reason="tcmalloc is not installed (libtcmalloc-minimal4)")
def test_allocator_environment_keeps_freed_pages_mapped():
  plain = _plain_environment()
  tuned = cpu_host.allocator_environment(plain)
  assert tuned["LD_PRELOAD"] == cpu_host.allocator_library()
  # glibc maps each 128 MiB afresh (32,768 pages, fewer with transparent huge pages); under tcmalloc
  # the second allocation reuses the first one's pages.
  faults_plain, faults_tuned = _faults(plain), _faults(tuned)
  assert faults_plain > 100
  assert faults_tuned * 10 < faults_plain


def test_allocator_left_alone_where_the_user_or_an_accelerator_decides(monkeypatch):
  monkeypatch.setattr(cpu_host, "allocator_library", lambda: "libtcmalloc_minimal.so.4")
  plain = _plain_environment()
  assert cpu_host.allocator_environment(plain)["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
  assert cpu_host.allocator_environment({**plain, "LD_PRELOAD": "libmine.so"}) is None
  assert cpu_host.allocator_environment({**plain, cpu_host.ALLOCATOR_ENV_VAR: "default"}) is None
  assert cpu_host.allocator_environment({**plain, "JAX_PLATFORMS": "cuda"}) is None
  monkeypatch.setattr(cpu_host, "allocator_library", lambda: None)
  assert cpu_host.allocator_environment(plain) is None


def test_entry_starts_the_command_again_under_the_allocator_once(monkeypatch):
  monkeypatch.setattr(cpu_host, "allocator_library", lambda: "libtcmalloc_minimal.so.4")
  monkeypatch.setattr(sys, "argv", ["mslam", "data", "languages"])
  monkeypatch.delenv("LD_PRELOAD", raising=False)
  monkeypatch.delenv(cpu_host.ALLOCATOR_ENV_VAR, raising=False)
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  started = []

  class Started(Exception):
    pass

  def execve(path, args, environ):
    started.append((path, args, environ["LD_PRELOAD"]))
    raise Started

  monkeypatch.setattr(cpu_host.os, "execve", execve)
  monkeypatch.setattr(cli, "main", lambda: 0)
  with pytest.raises(Started):
    cli.entry()
  assert started == [(sys.executable, [sys.executable, "-m", "mslam_jax", "data", "languages"],
                      "libtcmalloc_minimal.so.4")]
  # Started again, LD_PRELOAD is set: the command runs.
  monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
  with pytest.raises(SystemExit) as done:
    cli.entry()
  assert done.value.code == 0 and len(started) == 1


def test_cpu_slots_split_the_cores_evenly_between_processes_side_by_side():
  assert cpu_host.cpu_slots(2, cpus={0, 1}) == [frozenset({0}), frozenset({1})]
  slots = cpu_host.cpu_slots(3, cpus=range(8))
  assert sorted(len(s) for s in slots) == [2, 3, 3] and frozenset().union(*slots) == frozenset(range(8))
  assert all(a.isdisjoint(b) for i, a in enumerate(slots) for b in slots[i + 1:])
  # Nothing to split: one process, or more processes than cores.
  assert cpu_host.cpu_slots(1, cpus={0, 1}) is None and cpu_host.cpu_slots(3, cpus={0, 1}) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs CPU affinity")
def test_a_pinned_command_runs_on_its_cpus_with_its_own_arguments_and_exit_code():
  cpu = min(os.sched_getaffinity(0))
  script = "import os, sys; print(sorted(os.sched_getaffinity(0)), sys.argv[1:]); sys.exit(3)"
  done = subprocess.run(cpu_host.pinned_command([sys.executable, "-c", script, "a b", "--c"], {cpu}),
                        capture_output=True, text=True, check=False)
  assert done.returncode == 3, done.stderr
  assert done.stdout.strip() == f"[{cpu}] ['a b', '--c']"
