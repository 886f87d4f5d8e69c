"""The persistent compilation cache's directory rules and the CPU compiler settings."""
import os

from mslam_jax import compilation_cache


def test_directory_from_environment_and_off_switch(monkeypatch, tmp_path):
  monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "c"))
  assert compilation_cache.resolve_directory() == str(tmp_path / "c")
  monkeypatch.setenv(compilation_cache.ENV_VAR, "off")
  assert compilation_cache.resolve_directory() is None
  assert compilation_cache.enable() is None


def test_cpu_flags_added_on_cpu_hosts_and_never_override_the_user(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  assert compilation_cache.cpu_compiler_flags(None) == "--xla_backend_optimization_level=1"
  assert compilation_cache.cpu_compiler_flags("--xla_dump_to=/tmp/d") == (
      "--xla_dump_to=/tmp/d --xla_backend_optimization_level=1")
  assert compilation_cache.cpu_compiler_flags("--xla_backend_optimization_level=3") == (
      "--xla_backend_optimization_level=3")


def test_cpu_flags_left_alone_where_an_accelerator_may_compile(monkeypatch):
  # The GPU backend reads the same optimisation level for its own kernels.
  monkeypatch.setenv("JAX_PLATFORMS", "cuda")
  assert compilation_cache.cpu_compiler_flags("--a") == "--a"
  monkeypatch.setenv("JAX_PLATFORMS", "")
  monkeypatch.setattr(compilation_cache.importlib.util, "find_spec",
                      lambda name: object() if name == "jax_cuda12_plugin" else None)
  assert compilation_cache.cpu_compiler_flags(None) == ""


def test_tune_cpu_compiler_sets_the_environment(monkeypatch):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  compilation_cache.tune_cpu_compiler()
  assert os.environ["XLA_FLAGS"] == "--xla_backend_optimization_level=1"
