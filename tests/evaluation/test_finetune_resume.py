"""`mslam finetune` runs on trainer.Trainer: killed with SIGKILL mid-run and restarted, it resumes
from its latest checkpoint and ends bitwise where an uninterrupted run ends."""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from mslam_jax import checkpoints
from tests.trainer import helpers

pytestmark = pytest.mark.slow  # subprocesses that compile and fine-tune the tiny model

STEPS = 12
CHECKPOINT_EVERY = 3


def _command(run_dir: str, out: str) -> list[str]:
  return [sys.executable, "-m", "mslam_jax.cli", "finetune", "--task", "ctc", "--init_from", run_dir,
          f"--gin.MODEL_DIR='{out}'", "--freeze", "top_k", "--steps", str(STEPS),
          f"--gin.FinetuneConfig.checkpoint_every={CHECKPOINT_EVERY}", "--gin.FinetuneConfig.batch_size=4",
          "--gin.FinetuneConfig.max_audio_seconds=4.0", "--gin.FinetuneConfig.pretrained_head=None",
          "--gin.finetune_run.max_test_per_lang=2", "--gin.finetune_run.progress_bar=False",
          "--gin.finetune_run.tensorboard=False"]


def _params(model_dir: str):
  return jax.tree.map(np.asarray, checkpoints.load_params(checkpoints.step_dir(model_dir, STEPS)))


def test_sigkill_then_restart_reproduces_the_uninterrupted_finetune(tiny_run, tmp_path):
  env = helpers.env(1)  # the session's compilation cache: the restart reuses the first run's programs
  straight = str(tmp_path / "straight")
  done = subprocess.run(_command(tiny_run, straight), cwd=helpers.REPO, env=env, capture_output=True, text=True,
                        timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]

  killed = str(tmp_path / "killed")
  with open(str(tmp_path / "killed.log"), "w") as log:
    proc = subprocess.Popen(_command(tiny_run, killed), cwd=helpers.REPO, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    helpers.wait_for_step(killed, CHECKPOINT_EVERY + 1, proc, timeout=600)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL
  saved = checkpoints.checkpoint_steps(killed)
  assert saved and max(saved) < STEPS, saved  # killed mid-run, with a checkpoint behind it

  resumed = subprocess.run(_command(tiny_run, killed), cwd=helpers.REPO, env=env, capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming from step {max(saved)}" in resumed.stderr

  want, got = helpers.read_metrics(straight), helpers.read_metrics(killed)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert [got[s]["loss"] for s in sorted(got)] == [want[s]["loss"] for s in sorted(want)]
  np.testing.assert_equal(_params(killed), _params(straight))
  # The same test figures from the same parameters.
  assert json.loads(resumed.stdout)["ctc_cer"] == json.loads(done.stdout)["ctc_cer"]
  # Only the top shared layer and the head trained; the pre-trained checkpoint is untouched.
  assert os.path.exists(os.path.join(killed, "source.json"))
