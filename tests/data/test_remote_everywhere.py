"""Probe."""
import numpy as np
from etils import epath

from mslam_jax import checkpoints


def test_probe_orbax(fake_gcs):
  run = "gs://bucket/run"
  step_dir = checkpoints.save_params_checkpoint(run, {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, 0)
  print(sorted(k for k in __import__("tests.data.conftest", fromlist=["x"]).FakeGCS.store))
  params = checkpoints.load_params(step_dir)
  np.testing.assert_array_equal(params["w"], np.arange(6, dtype=np.float32).reshape(2, 3))
