"""The persistent compilation cache's directory rules."""

from mslam_jax import compilation_cache


def test_directory_from_environment_and_off_switch(monkeypatch, tmp_path):
  monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "c"))
  assert compilation_cache.resolve_directory() == str(tmp_path / "c")
  monkeypatch.setenv(compilation_cache.ENV_VAR, "off")
  assert compilation_cache.resolve_directory() is None
  assert compilation_cache.enable() is None
