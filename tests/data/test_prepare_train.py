"""`mslam train` on a mixture of prepared corpora (data/mslam_paper.gin): a few steps end to end."""
import math
import os
import subprocess
import sys

import pytest

from mslam_jax.data.corpora import prepare
from tests.data.corpora import trees
from tests.trainer import helpers


@pytest.mark.slow
def test_train_on_a_mixture_of_prepared_corpora(tmp_path):
  dirs = {}
  for name in ("fleurs", "common_voice", "mc4"):
    root = trees.WRITERS[name](str(tmp_path / "src" / name))
    dirs[name] = str(tmp_path / "prepared" / name)
    prepare.prepare(name, root, dirs[name], shard_size=4)
  model_dir = str(tmp_path / "run")
  bindings = [f"PREPARED_CORPORA={dirs!r}", "SPEECH_CORPORA=['common_voice']", "TEXT_CORPORA=['mc4']",
              "PAIRED_CORPORA=['fleurs', 'common_voice']", "SPEECH_BATCH=2", "TEXT_BATCH=2", "PAIRED_BATCH=2",
              "SPEECH_SAMPLES=16000", "PAIRED_SAMPLES=48000", "TEXT_LENGTH=32", "PAIRED_TEXT_LENGTH=48",
              "train.log_every=1", "train.checkpoint_every=2", "train.progress_bar=False",
              "train.async_checkpoints=False"]
  paper_gin = os.path.join(helpers.REPO, "gin_configs", "data", "mslam_paper.gin")
  command = [sys.executable, "-m", "mslam_jax.cli", "train", "--gin_file=models/tiny.gin",
             "--gin_file=runs/pretrain.gin", f"--gin_file={paper_gin}", f"--gin.MODEL_DIR='{model_dir}'",
             "--gin.TRAIN_STEPS=2"] + [f"--gin.{b}" for b in bindings]
  proc = subprocess.run(command, cwd=helpers.REPO, env=helpers.env(), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = helpers.read_metrics(model_dir)
  assert sorted(metrics) == [1, 2]
  assert all(math.isfinite(m["loss"]) for m in metrics.values())
  operative = open(os.path.join(model_dir, "operative_config.gin"), encoding="utf-8").read()
  assert "prepared_paired" in operative
