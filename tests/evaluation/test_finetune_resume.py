"""`mslam finetune` runs on trainer.Trainer: killed with SIGKILL mid-run and restarted, each task head
(ctc, classify, translate) resumes from its latest checkpoint and ends bitwise where an
uninterrupted run ends, with the same test figures."""
import json
import os
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from mslam_jax import checkpoints
from mslam_jax.data import espeak
from mslam_jax.data import translation as translation_data
from tests.trainer import helpers

pytestmark = pytest.mark.slow  # subprocesses that compile and fine-tune the tiny model

# The task's steps and checkpoint interval; its test figure, the same from the same parameters;
# its own flags.
TASKS = {
    # With SpecAugment's time masking: its spans come from the step's key, so a resume redraws them.
    "ctc": (12, 3, "ctc_cer", ["--freeze", "top_k", "--gin.FinetuneConfig.pretrained_head=None",
                               "--gin.FinetuneConfig.max_audio_seconds=4.0", "--gin.FinetuneConfig.time_mask_prob=0.2",
                               "--gin.FinetuneConfig.time_mask_length=4"]),
    "classify": (10, 2, "classify_accuracy", ["--freeze", "top_k", "--gin.FinetuneConfig.max_audio_seconds=2.0"]),
    "translate": (10, 2, "translation_chrf", [
        "--gin_file=runs/finetune_translate.gin", "--gin.DECODER_EMBED_DIM=32", "--gin.DECODER_LAYERS=1",
        "--gin.DECODER_HEADS=2", "--gin.DECODER_MLP_DIM=64", "--gin.FinetuneConfig.max_audio_seconds=3.0",
        "--gin.FinetuneConfig.length_buckets=(1.5,)",  # two batch shapes: the step compiles twice
        "--gin.FinetuneConfig.warmup_steps=2", "--gin.finetune_run.max_train_per_lang=4",
        "--gin.TranslationEvaluator.max_per_lang=1",
        "--gin.TranslationEvaluator.beam_size=1", "--gin.TranslationEvaluator.max_length=8"]),
}


def _command(task: str, run_dir: str, corpus_dir: str, out: str) -> list[str]:
  steps, every, _, flags = TASKS[task]
  return [sys.executable, "-m", "mslam_jax.cli", "finetune", "--task", task, "--init_from", run_dir,
          "--corpus_dir", corpus_dir, f"--gin.MODEL_DIR='{out}'", "--steps", str(steps),
          f"--gin.FinetuneConfig.checkpoint_every={every}", "--gin.FinetuneConfig.batch_size=4",
          "--gin.finetune_run.max_test_per_lang=2", "--gin.finetune_run.progress_bar=False",
          "--gin.finetune_run.tensorboard=False"] + flags


def _params(model_dir: str, steps: int):
  return jax.tree.map(np.asarray, checkpoints.load_params(checkpoints.step_dir(model_dir, steps)))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_sigkill_then_restart_reproduces_the_uninterrupted_finetune(task, tiny_pretrained, builtin_corpus_dir,
                                                                     tmp_path):
  steps, every, figure, _ = TASKS[task]
  corpus = builtin_corpus_dir
  if task == "translate":  # translation data goes into the corpus: a copy of the shared one, made once
    corpus = shutil.copytree(builtin_corpus_dir, str(tmp_path / "corpus"))
    translation_data.build_translation_data(corpus, per_language=4, progress=False, synthesize=espeak.synthesize)
  command = lambda out: _command(task, tiny_pretrained, corpus, out)
  env = helpers.env(1)  # the session's compilation cache
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  # The run to kill goes first, alone: it compiles the train step into the cache, from which the
  # uninterrupted run and the restart then start side by side (one compile of the step, not two).
  with open(str(tmp_path / "killed.log"), "w") as log:
    proc = subprocess.Popen(command(killed), cwd=helpers.REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    helpers.wait_for_step(killed, every + 1, proc, timeout=600)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL
  saved = checkpoints.checkpoint_steps(killed)
  assert saved and max(saved) < steps, saved  # killed mid-run, with a checkpoint behind it

  with open(str(tmp_path / "straight.log"), "w") as straight_log:
    done = subprocess.Popen(command(straight), cwd=helpers.REPO, env=env, stdout=subprocess.PIPE, stderr=straight_log,
                            text=True)
    resumed = subprocess.run(command(killed), cwd=helpers.REPO, env=env, capture_output=True, text=True, timeout=600)
    done_stdout, _ = done.communicate(timeout=600)
  assert done.returncode == 0, open(str(tmp_path / "straight.log")).read()[-3000:]
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming from step {max(saved)}" in resumed.stderr

  want, got = helpers.read_metrics(straight), helpers.read_metrics(killed)
  assert sorted(got) == list(range(1, steps + 1))
  assert [got[s]["loss"] for s in sorted(got)] == [want[s]["loss"] for s in sorted(want)]
  np.testing.assert_equal(_params(killed, steps), _params(straight, steps))
  # The same test figures from the same parameters.
  assert json.loads(resumed.stdout)[figure] == json.loads(done_stdout)[figure]
  assert os.path.exists(os.path.join(killed, "source.json"))
