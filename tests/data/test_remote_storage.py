"""Run directories, checkpoints and gin files on gs:// (any etils.epath scheme), against an in-memory
fsspec filesystem standing in for Cloud Storage (the `fake_gcs` fixture of conftest.py)."""
import gin
import pytest
from etils import epath

from mslam_jax import checkpoints
from mslam_jax import config


def test_run_directory_paths_stay_remote(fake_gcs):
  run = "gs://bucket/runs/mslam"
  assert checkpoints.absolute(run) == run and checkpoints.step_dir(run, 5) == f"{run}/checkpoints/5"
  assert checkpoints.absolute("rel/run").startswith("/")
  for step in (100, 300):
    (epath.Path(run) / "checkpoints" / str(step) / "state").mkdir(parents=True)
  (epath.Path(run) / "checkpoints" / "200.orbax-checkpoint-tmp-1").mkdir(parents=True)  # unfinished
  assert checkpoints.checkpoint_steps(run) == [100, 300]
  assert checkpoints.resolve_checkpoint(run) == (run, f"{run}/checkpoints/300")
  assert checkpoints.resolve_checkpoint(f"{run}/checkpoints/100") == (run, f"{run}/checkpoints/100")
  with pytest.raises(FileNotFoundError, match="gs://bucket/nothing"):
    checkpoints.resolve_checkpoint("gs://bucket/nothing")


def test_operative_config_and_gin_files_on_gs(fake_gcs):
  (epath.Path("gs://bucket/configs")).mkdir(parents=True)
  epath.Path("gs://bucket/configs/base.gin").write_text("import mslam_jax.optimizers\nmake_optimizer.peak_learning_rate = 7.0\n")
  epath.Path("gs://bucket/configs/run.gin").write_text("include 'gs://bucket/configs/base.gin'\n"
                                                       "make_optimizer.warmup_steps = 3\n")
  path = config.resolve_gin_file("gs://bucket/configs/run.gin")
  assert path == "gs://bucket/configs/run.gin"
  config.parse_gin([path])
  assert gin.query_parameter("make_optimizer.peak_learning_rate") == 7.0
  assert gin.query_parameter("make_optimizer.warmup_steps") == 3
  text = config.log_operative_config("gs://bucket/runs/a")
  assert "mslam_jax.optimizers" in text
  assert epath.Path("gs://bucket/runs/a/operative_config.gin").read_text() == text
  with pytest.raises(FileNotFoundError, match="gs://bucket/configs/missing.gin"):
    config.resolve_gin_file("gs://bucket/configs/missing.gin")
