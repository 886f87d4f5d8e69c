"""runs/pretrain.gin end to end: the tiny MSLAMModel on the built-in corpus's step iterator, with
TensorBoard and JSON-lines metrics, and a restart that continues exactly where the run stopped."""
import glob
import os
import shutil

import gin
import numpy as np
import pytest

from mslam_jax import cli
from tests import conftest
from tests.trainer import helpers


@pytest.mark.slow
def test_pretrain_gin_trains_the_real_model_and_resumes_exactly(tiny_run, tmp_path, builtin_corpus_dir, caplog):
  # The session's tiny run (conftest.tiny_run: runs/pretrain.gin, 3 steps) is the straight run.
  straight, restarted = tiny_run, str(tmp_path / "restarted")
  want = helpers.read_metrics(straight)
  assert sorted(want) == [1, 2, 3]
  for step in want:
    assert np.isfinite(want[step]["loss"])
    # Every loss term of the model is logged next to the trainer's figures.
    assert {"grad_norm", "learning_rate", "param_norm", "audio_hours_per_sec"} <= set(want[step])
    assert len(want[step]) > 12
  assert glob.glob(os.path.join(straight, "tensorboard", "events.out.tfevents.*"))
  with open(os.path.join(straight, "operative_config.gin")) as f:
    assert "train.model = @MSLAMModel()" in f.read()

  # A copy of the run as it stood at step 2 (the later checkpoint gone, as after a crash):
  # restarting it must redo step 3 on the same batch with the same numbers.
  shutil.copytree(straight, restarted, ignore=shutil.ignore_patterns("eval"))
  shutil.rmtree(os.path.join(restarted, "checkpoints", "3"))
  os.remove(os.path.join(restarted, "metrics.jsonl"))
  gin.clear_config()
  try:
    with caplog.at_level("INFO"):
      assert cli.main(conftest.tiny_train_args(restarted, builtin_corpus_dir)) == 0
  finally:
    gin.clear_config()
  assert "Resuming from step 2" in caplog.text
  redone = helpers.read_metrics(restarted)
  assert sorted(redone) == [3] and redone[3]["loss"] == want[3]["loss"]
  assert helpers.data_state(restarted, 3) == helpers.data_state(straight, 3)
  assert helpers.data_state(straight, 3)["position"] == 3
  got, ref = (helpers.checkpoint_state(d, 3)["params"] for d in (restarted, straight))
  np.testing.assert_equal(got, ref)


def test_pretrain_gin_names_the_missing_required_macros(capsys):
  # In-process: parsing stops before JAX or the corpus is touched.
  try:
    rc = cli.main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
                   "--gin.TRAIN_STEPS=1"])
  finally:
    gin.clear_config()
  assert rc == 2
  assert "REQUIRED gin macro(s) not set: CORPUS_DIR, MODEL_DIR" in capsys.readouterr().err
