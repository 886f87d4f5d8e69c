"""runs/pretrain.gin end to end: the tiny MSLAMModel on the built-in corpus's step iterator, with
TensorBoard and JSON-lines metrics, and a restart that continues exactly where the run stopped."""
import glob
import os
import shutil

import numpy as np

from tests.trainer import helpers

TINY = [
    "SPEECH_BATCH=2", "TEXT_BATCH=2", "PAIRED_BATCH=2", "SPEECH_SAMPLES=16000",
    "PAIRED_SAMPLES=32000", "TEXT_LENGTH=32", "PAIRED_TEXT_LENGTH=32",
    "train.log_every=1", "train.checkpoint_every=1", "train.progress_bar=False",
    "make_optimizer.peak_learning_rate=1e-3", "make_optimizer.warmup_steps=10",
]


def _run(model_dir, steps, corpus, cache_dir):
  command = ([helpers.sys.executable, "-m", "mslam_jax.train", "--gin_file=models/tiny.gin",
              "--gin_file=runs/pretrain.gin", f"--gin.MODEL_DIR='{model_dir}'",
              f"--gin.TRAIN_STEPS={steps}", f"--gin.CORPUS_DIR='{corpus}'"]
             + [f"--gin.{b}" for b in TINY])
  return helpers.subprocess.run(command, cwd=helpers.REPO, env=helpers.env(1, cache_dir),
                                capture_output=True, text=True, timeout=600)


def test_pretrain_gin_trains_the_real_model_and_resumes_exactly(tmp_path, builtin_corpus_dir):
  cache = str(tmp_path / "jax_cache")
  straight, restarted = str(tmp_path / "straight"), str(tmp_path / "restarted")
  proc = _run(straight, 3, builtin_corpus_dir, cache)
  assert proc.returncode == 0, proc.stderr[-4000:]
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
  shutil.copytree(straight, restarted)
  shutil.rmtree(os.path.join(restarted, "checkpoints", "3"))
  os.remove(os.path.join(restarted, "metrics.jsonl"))
  proc = _run(restarted, 3, builtin_corpus_dir, cache)
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "Resuming from step 2" in proc.stderr
  redone = helpers.read_metrics(restarted)
  assert sorted(redone) == [3] and redone[3]["loss"] == want[3]["loss"]
  assert helpers.data_state(restarted, 3) == helpers.data_state(straight, 3)
  assert helpers.data_state(straight, 3)["position"] == 3
  got, ref = (helpers.checkpoint_state(d, 3)["params"] for d in (restarted, straight))
  np.testing.assert_equal(got, ref)


def test_pretrain_gin_names_the_missing_required_macros(capsys):
  # In-process: parsing stops before JAX or the corpus is touched.
  import gin  # pylint: disable=g-import-not-at-top
  from mslam_jax import cli  # pylint: disable=g-import-not-at-top
  try:
    rc = cli.main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin",
                   "--gin.TRAIN_STEPS=1"])
  finally:
    gin.clear_config()
  assert rc == 2
  assert "REQUIRED gin macro(s) not set: CORPUS_DIR, MODEL_DIR" in capsys.readouterr().err
