"""`mslam finetune` runs on trainer.Trainer: killed with SIGKILL mid-run and restarted, each task head
(ctc, classify, translate) resumes from its latest checkpoint and ends bitwise where an
uninterrupted run ends, with the same test figures."""
import json
import os
import shutil
import signal
import subprocess
import sys

import gin
import jax
import numpy as np
import pytest

from mslam_jax import checkpoints
from mslam_jax import cli
from mslam_jax.data import espeak
from mslam_jax.data import translation as translation_data
from tests.trainer import helpers

pytestmark = pytest.mark.slow  # compiles and fine-tunes the tiny model, in a subprocess and here

# The task's steps and checkpoint interval; its test figure, the same from the same parameters;
# its own flags. The CTC task trains the encoder's top layers too (their optimizer state resumes);
# the other two train their head or decoder alone: a smaller program to compile.
TASKS = {
    # With SpecAugment's time masking: its spans come from the step's key, so a resume redraws them.
    "ctc": (12, 3, "ctc_cer", ["--freeze", "top_k", "--gin.FinetuneConfig.pretrained_head=None",
                               "--gin.FinetuneConfig.max_audio_seconds=4.0", "--gin.FinetuneConfig.time_mask_prob=0.2",
                               "--gin.FinetuneConfig.time_mask_length=4"]),
    "classify": (10, 2, "classify_accuracy", ["--freeze", "frozen", "--gin.FinetuneConfig.max_audio_seconds=2.0"]),
    "translate": (10, 2, "translation_chrf", [
        "--gin_file=runs/finetune_translate.gin", "--freeze", "frozen", "--gin.DECODER_EMBED_DIM=32", "--gin.DECODER_LAYERS=1",
        "--gin.DECODER_HEADS=2", "--gin.DECODER_MLP_DIM=64", "--gin.FinetuneConfig.max_audio_seconds=3.0",
        "--gin.FinetuneConfig.length_buckets=(1.5,)",  # two batch shapes: the step compiles twice
        "--gin.FinetuneConfig.warmup_steps=2", "--gin.finetune_run.max_train_per_lang=4",
        "--gin.TranslationEvaluator.max_per_lang=1",
        "--gin.TranslationEvaluator.beam_size=1", "--gin.TranslationEvaluator.max_length=8"]),
}


def _args(task: str, run_dir: str, corpus_dir: str, out: str) -> list[str]:
  steps, every, _, flags = TASKS[task]
  return ["finetune", "--task", task, "--init_from", run_dir, "--corpus_dir", corpus_dir, f"--gin.MODEL_DIR='{out}'",
          "--steps", str(steps), f"--gin.FinetuneConfig.checkpoint_every={every}", "--gin.FinetuneConfig.batch_size=4",
          "--gin.finetune_run.max_test_per_lang=2", "--gin.finetune_run.progress_bar=False",
          "--gin.finetune_run.tensorboard=False"] + flags


def _finetune_here(args: list[str], capsys) -> dict:
  """`mslam finetune` in this process (TF, SeqIO and JAX already started; the train step comes
  from the compilation cache the killed run filled); returns the figures it printed."""
  gin.clear_config()
  try:
    rc = cli.main(args)
  finally:
    gin.clear_config()
  captured = capsys.readouterr()
  assert rc == 0, captured.err[-3000:]
  return json.loads(captured.out)


def _params(model_dir: str, steps: int):
  return jax.tree.map(np.asarray, checkpoints.load_params(checkpoints.step_dir(model_dir, steps)))


@pytest.mark.parametrize("task", sorted(TASKS))
def test_sigkill_then_restart_reproduces_the_uninterrupted_finetune(task, tiny_pretrained, builtin_corpus_dir,
                                                                     tmp_path, capsys, caplog):
  steps, every, figure, _ = TASKS[task]
  corpus = builtin_corpus_dir
  if task == "translate":  # translation data goes into the corpus: a copy of the shared one, made once
    corpus = shutil.copytree(builtin_corpus_dir, str(tmp_path / "corpus"))
    translation_data.build_translation_data(corpus, per_language=4, progress=False, synthesize=espeak.synthesize)
  args = lambda out: _args(task, tiny_pretrained, corpus, out)
  straight, killed = str(tmp_path / "straight"), str(tmp_path / "killed")
  # Only the run to kill needs a process of its own; it compiles the train step into the session's
  # cache, from which the restart and the uninterrupted run then start in this process.
  with open(str(tmp_path / "killed.log"), "w") as log:
    proc = subprocess.Popen([sys.executable, "-m", "mslam_jax.cli"] + args(killed), cwd=helpers.REPO,
                            env=helpers.env(1), stdout=log, stderr=subprocess.STDOUT)
    helpers.wait_for_step(killed, every + 1, proc, timeout=600)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL
  saved = checkpoints.checkpoint_steps(killed)
  assert saved and max(saved) < steps, saved  # killed mid-run, with a checkpoint behind it

  with caplog.at_level("INFO"):
    resumed = _finetune_here(args(killed), capsys)
  assert f"Resuming from step {max(saved)}" in caplog.text
  done = _finetune_here(args(straight), capsys)

  want, got = helpers.read_metrics(straight), helpers.read_metrics(killed)
  assert sorted(got) == list(range(1, steps + 1))
  assert [got[s]["loss"] for s in sorted(got)] == [want[s]["loss"] for s in sorted(want)]
  np.testing.assert_equal(_params(killed, steps), _params(straight, steps))
  # The same test figures from the same parameters.
  assert resumed[figure] == done[figure]
  assert os.path.exists(os.path.join(killed, "source.json"))
