"""The persistent compilation cache's directory rules."""

from mslam_jax import compilation_cache


def test_directory_from_environment_and_off_switch(monkeypatch, tmp_path):
  monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "c"))
  assert compilation_cache.resolve_directory() == str(tmp_path / "c")
  monkeypatch.setenv(compilation_cache.ENV_VAR, "off")
  assert compilation_cache.resolve_directory() is None
  assert compilation_cache.enable() is None


def test_a_command_default_yields_to_the_environment_and_its_off_switch(monkeypatch, tmp_path):
  monkeypatch.delenv(compilation_cache.ENV_VAR, raising=False)
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # the command's own comes first
  assert compilation_cache.resolve_directory(default=str(tmp_path / "own")) == str(tmp_path / "own")
  monkeypatch.setenv(compilation_cache.ENV_VAR, str(tmp_path / "shared"))
  assert compilation_cache.resolve_directory(default=str(tmp_path / "own")) == str(tmp_path / "shared")
  for off in ("off", ""):  # the empty string is an off switch too, not "unset"
    monkeypatch.setenv(compilation_cache.ENV_VAR, off)
    assert compilation_cache.enable(default=str(tmp_path / "own")) is None
  assert not (tmp_path / "own").exists()
