"""`mslam finetune`'s job (CTC fine-tuning of a run's checkpoint, saved with its test figures) and
the loader of what it saves (`mslam align` reads it)."""
import json
import logging
import os
from typing import Sequence

import gin

from mslam_jax import checkpoints
from mslam_jax import config
from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import finetune
from mslam_jax.evaluation import report

SOURCE_FILE = "source.json"  # the run and step a fine-tuned directory was made from


@gin.configurable
def finetune_run(model_dir: str = gin.REQUIRED, corpus_dir: str = gin.REQUIRED, output_dir: str = gin.REQUIRED,
                 step: int | None = None, langs: Sequence[str] | None = None,
                 max_train_per_lang: int | None = None, max_test_per_lang: int | None = 100,
                 beam_size: int = 8) -> dict[str, float]:
  """CTC fine-tuning of a checkpoint; saves the result (for `mslam align`) and its test figures."""
  model = config.build_model()
  params, step = checkpoints.restore_params(model_dir, step)
  langs = list(langs or eval_data.training_languages(corpus_dir))
  settings = finetune.FinetuneConfig()
  train = eval_data.read_utterances(corpus_dir, "paired", "train", langs, max_train_per_lang)
  tuned = finetune.finetune_ctc(model, params, train, eval_data.load_vocabulary(corpus_dir), settings)
  tuned.save(output_dir)
  with open(os.path.join(output_dir, SOURCE_FILE), "w") as f:
    json.dump({"model_dir": os.path.abspath(model_dir), "step": step, "corpus_dir": os.path.abspath(corpus_dir),
               "langs": langs, "freeze": settings.freeze, "top_k": settings.top_k, "steps": settings.steps},
              f, indent=1)
  test = eval_data.read_utterances(corpus_dir, "paired", "test", langs, max_test_per_lang)
  metrics = finetune.ctc_metrics(tuned, test, "ctc", beam_size)
  finetune._plot_losses(os.path.join(output_dir, "ctc_finetune_loss.png"), tuned.losses,  # pylint: disable=protected-access
                        f"CTC fine-tuning ({settings.freeze}) from step {step}")
  report.write_checkpoint_report(output_dir, step, metrics, checkpoints.step_dir(model_dir, step))
  return metrics


def load_finetuned(directory: str) -> finetune.FinetunedCTC:
  """A `mslam finetune` output directory -> FinetunedCTC (the model rebuilt from its source run).

  Replaces the process' gin config by the source run's.
  """
  source_path = os.path.join(directory, SOURCE_FILE)
  if not os.path.exists(source_path):
    raise FileNotFoundError(f"{directory} is not a fine-tuned CTC model (no {SOURCE_FILE}); "
                            "make one with `mslam finetune --model_dir RUN --out DIR`")
  with open(source_path) as f:
    source = json.load(f)
  steps = checkpoints.checkpoint_steps(source["model_dir"])
  if not steps:
    raise FileNotFoundError(f"the source run {source['model_dir']} has no checkpoints left to give the structure")
  # Only the structure of the encoder's parameters is needed; the saved values replace them, so
  # any step of the source run will do when checkpoint rotation has deleted the one it started from.
  step = source["step"]
  if step not in steps:
    logging.info("Step %s of the source run %s was rotated away; its step %d gives the same structure",
                 step, source["model_dir"], steps[-1])
    step = steps[-1]
  model, encoder_params, _ = config.load_run(source["model_dir"], step)
  return finetune.FinetunedCTC.load(directory, model, encoder_params)
