"""What the user-facing evaluation commands share: loading a run, reading audio, the finetune job.

The commands themselves live in mslam_jax/evaluation/*_command.py (`mslam retrieve`, `mslam
langid`, `mslam finetune`, `mslam align`); `mslam eval` is mslam_jax.eval.
"""
import json
import logging
import os
import sys
from typing import Any, Sequence

import gin
import numpy as np


def setup_logging() -> None:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                      stream=sys.stderr)


def load_run(model_dir: str, step: int | None = None, bindings: Sequence[str] = (),
             gin_files: Sequence[str] = ()) -> tuple[Any, Any, int]:
  """(model, params, step) of a pre-training run's checkpoint (latest when `step` is None)."""
  from mslam_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  eval_lib.parse_run_config(model_dir, gin_files, bindings)
  model = eval_lib.model_from_gin()
  step = eval_lib.select_steps(model_dir, "latest" if step is None else step)[0]
  logging.info("Restoring step %d of %s", step, model_dir)
  return model, eval_lib.restore_params(model_dir, step), step


def corpus_dir_from_gin() -> str | None:
  try:
    return gin.query_parameter("%CORPUS_DIR")
  except ValueError:
    return None


def read_audio(path: str) -> np.ndarray:
  """Mono float32 16 kHz audio of any file soundfile reads (resampled and down-mixed as needed)."""
  from mslam_jax.data import audio  # pylint: disable=g-import-not-at-top
  samples, rate = audio.read_audio_file(path)
  return audio.validate_audio(samples, rate, item_id=path, max_seconds=3600.0)


def print_json(payload: Any) -> None:
  print(json.dumps(payload, ensure_ascii=False, indent=1))


@gin.configurable
def finetune_run(model_dir: str = gin.REQUIRED, corpus_dir: str = gin.REQUIRED, output_dir: str = gin.REQUIRED,
                 step: int | None = None, langs: Sequence[str] | None = None,
                 max_train_per_lang: int | None = None, max_test_per_lang: int | None = 100,
                 beam_size: int = 8) -> dict[str, float]:
  """CTC fine-tuning of a checkpoint; saves the result (for `mslam align`) and its test figures."""
  from mslam_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import finetune, report  # pylint: disable=g-import-not-at-top
  model = eval_lib.model_from_gin()
  step = eval_lib.select_steps(model_dir, "latest" if step is None else step)[0]
  params = eval_lib.restore_params(model_dir, step)
  langs = list(langs or eval_data.training_languages(corpus_dir))
  config = finetune.FinetuneConfig()
  train = eval_data.read_utterances(corpus_dir, "paired", "train", langs, max_train_per_lang)
  tuned = finetune.finetune_ctc(model, params, train, eval_data.load_vocabulary(corpus_dir), config)
  tuned.save(output_dir)
  with open(os.path.join(output_dir, "source.json"), "w") as f:
    json.dump({"model_dir": os.path.abspath(model_dir), "step": step, "corpus_dir": os.path.abspath(corpus_dir),
               "langs": langs, "freeze": config.freeze, "top_k": config.top_k, "steps": config.steps}, f, indent=1)
  test = eval_data.read_utterances(corpus_dir, "paired", "test", langs, max_test_per_lang)
  metrics = finetune.ctc_metrics(tuned, test, "ctc", beam_size)
  finetune._plot_losses(os.path.join(output_dir, "ctc_finetune_loss.png"), tuned.losses,  # pylint: disable=protected-access
                        f"CTC fine-tuning ({config.freeze}) from step {step}")
  report.write_checkpoint_report(output_dir, step, metrics, os.path.join(model_dir, "checkpoints", str(step)))
  return metrics


def load_finetuned(directory: str):
  """A `mslam finetune` output directory -> FinetunedCTC (the model rebuilt from its source run)."""
  from mslam_jax import eval as eval_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import finetune  # pylint: disable=g-import-not-at-top
  source_path = os.path.join(directory, "source.json")
  if not os.path.exists(source_path):
    raise FileNotFoundError(f"{directory} is not a fine-tuned CTC model (no source.json); "
                            "make one with `mslam finetune --model_dir RUN --out DIR`")
  with open(source_path) as f:
    source = json.load(f)
  eval_lib.parse_run_config(source["model_dir"])
  model = eval_lib.model_from_gin()
  # Only the structure of the encoder's parameters is needed; the saved values replace them.
  encoder_params = eval_lib.restore_params(source["model_dir"], source["step"]) \
      if eval_lib.checkpoint_steps(source["model_dir"]) else None
  if encoder_params is None:
    raise FileNotFoundError(f"the source run {source['model_dir']} has no checkpoints left to give the structure")
  return finetune.FinetunedCTC.load(directory, model, encoder_params)
