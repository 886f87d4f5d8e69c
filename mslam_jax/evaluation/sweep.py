"""Evaluation sweeps over a run's checkpoints (`mslam eval` and `mslam demo` call these).

The run's own `operative_config.gin` (written by the trainer into MODEL_DIR) supplies the model and
the corpus; runs/eval.gin picks the evaluators. Each checkpoint's figures go to
MODEL_DIR/eval/step_<N>/ (metrics.json, report.md, plots); a checkpoint that already has its
metrics.json is skipped unless `force`, so a sweep can be rerun as training goes on (t5x style); one
whose evaluation failed in part, or whose metrics.json is unreadable, is evaluated again.
"""
import logging
import os
from typing import Any, Sequence

import gin

from mslam_jax import checkpoints as checkpoints_lib
from mslam_jax import config
from mslam_jax.evaluation import base
from mslam_jax.evaluation import registry
from mslam_jax.evaluation import report
from mslam_jax.evaluation import runner
from mslam_jax.evaluation import zero_shot


@gin.configurable
def evaluate_checkpoints(model_dir: str = gin.REQUIRED, model: Any = None, checkpoints: str | int = "latest",
                         output_dir: str | None = None, evaluators: Sequence[Any] | None = None,
                         extra_metrics: dict[str, float] | None = None, force: bool = False,
                         corpus_dir: str | None = None, seed: int = 0) -> dict[int, dict[str, float]]:
  """Evaluates checkpoints of `model_dir` under the current config; returns {step: metrics}
  (those evaluated before read back).

  `corpus_dir`: the corpus handed to every evaluator (runs/eval.gin binds the run's CORPUS_DIR).
  `extra_metrics` join every checkpoint's report (the speech-only ablation's figures, which
  `evaluate_ablation` computes under the ablation run's own config). A checkpoint whose report has a
  failed evaluator, lacks one of `evaluators` or cannot be read is evaluated again.
  """
  model = model if model is not None else config.build_model()
  evaluators = list(evaluators) if evaluators is not None else registry.build_evaluators()
  if not evaluators:
    raise ValueError("no evaluators: set build_evaluators.names in gin (runs/eval.gin lists them)")
  names = [e.name for e in evaluators]
  output_dir = base.eval_dir(model_dir, output_dir)
  extra = dict(extra_metrics or {})
  results, compiled = {}, {}
  for step in checkpoints_lib.select_steps(model_dir, checkpoints):
    out_dir = base.step_eval_dir(model_dir, step, output_dir)
    checkpoint_dir = checkpoints_lib.step_dir(model_dir, step)
    previous = None if force else report.read_checkpoint_metrics(out_dir, names)
    if previous is not None:
      logging.info("Step %d already evaluated (%s); skipping", step, out_dir)
      if any(previous.get(k) != v for k, v in extra.items()):  # e.g. an ablation added later
        previous.update(extra)
        report.write_checkpoint_report(out_dir, step, previous, checkpoint_dir, names)
      results[step] = previous
      continue
    logging.info("Evaluating step %d of %s with %s", step, model_dir, names)
    params = checkpoints_lib.load_params(checkpoint_dir)
    ctx = base.EvalContext(model=model, params=params, step=step, model_dir=model_dir, corpus_dir=corpus_dir,
                           out_dir=out_dir, seed=seed, compiled=compiled)
    results[step] = runner.evaluate_checkpoint(evaluators, ctx, checkpoint_dir, extra).metrics
    del params, ctx
  report.write_sweep_report(output_dir, results)
  logging.info("Evaluation report: %s", os.path.join(output_dir, report.REPORT_FILE))
  return results


def failed_evaluators(results: dict[int, dict[str, float]]) -> dict[int, list[str]]:
  """{step: names of the evaluators that failed on it} for the steps with a failure."""
  out = {}
  for step, metrics in results.items():
    names = sorted(k[len(base.FAILED_PREFIX):] for k in metrics if k.startswith(base.FAILED_PREFIX))
    if names or metrics.get(base.FAILED_KEY, 0):
      out[step] = names or ["?"]
  return out


def _parse_run(model_dir: str, gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str],
               corpus_dir: str | None = None, evaluators: Sequence[str] | None = None) -> None:
  """The run's operative config + `gin_files` + `bindings` (+ corpus and evaluator choices)."""
  extra = [f"CORPUS_DIR = '{corpus_dir}'"] if corpus_dir else []
  if evaluators is not None:
    extra.append(f"build_evaluators.names = {list(evaluators)!r}")
  config.parse_run_config(model_dir, gin_files, [f"MODEL_DIR = '{model_dir}'"] + list(bindings) + extra,
                          search_paths)
  config.check_required_macros()


def sweep(model_dir: str, checkpoints: str | int = "latest", corpus_dir: str | None = None,
          evaluators: Sequence[str] | None = None, ablation_model_dir: str | None = None,
          gin_files: Sequence[str] = ("runs/eval.gin",), bindings: Sequence[str] = (),
          search_paths: Sequence[str] = (), output_dir: str | None = None,
          force: bool = False) -> dict[int, dict[str, float]]:
  """`mslam eval` for programs: the run's operative config + `gin_files` + `bindings`, then the sweep.

  Replaces the process' gin config (call it after training is done). `evaluators`: names (default:
  those of the gin files). `corpus_dir`: default, the run's CORPUS_DIR. `ablation_model_dir`: a
  speech-only pre-trained run, evaluated first under its own config (`evaluate_ablation`).
  """
  output_dir = base.eval_dir(model_dir, output_dir)
  ablation = {}
  if ablation_model_dir:
    ablation = ablation_figures(model_dir, ablation_model_dir, corpus_dir=corpus_dir, evaluators=evaluators,
                                gin_files=gin_files, bindings=bindings, search_paths=search_paths,
                                output_dir=output_dir, force=force)
  _parse_run(model_dir, gin_files, bindings, search_paths, corpus_dir, evaluators)
  return evaluate_checkpoints(model_dir=model_dir, checkpoints=checkpoints, output_dir=output_dir,
                              extra_metrics=ablation, force=force)


def ablation_figures(model_dir: str, ablation_model_dir: str, corpus_dir: str | None = None,
                     evaluators: Sequence[str] | None = None, gin_files: Sequence[str] = ("runs/eval.gin",),
                     bindings: Sequence[str] = (), search_paths: Sequence[str] = (), output_dir: str | None = None,
                     force: bool = False) -> dict[str, float]:
  """The speech-only ablation's figures exactly as `sweep` adds them to `model_dir`'s (its arguments):
  scored on the main run's corpus, under the ablation run's own config. A later sweep with the same
  arguments reads them back (`mslam demo` computes them in a second process beside its sweep)."""
  _parse_run(model_dir, gin_files, bindings, search_paths, corpus_dir, evaluators)
  return evaluate_ablation(ablation_model_dir, config.macro("CORPUS_DIR"), gin_files=gin_files,
                           bindings=[b for b in bindings if _binding_name(b) != "MODEL_DIR"],
                           search_paths=search_paths, output_dir=base.eval_dir(model_dir, output_dir),
                           force=force)


@gin.configurable(denylist=["ablation_model_dir", "corpus_dir", "gin_files", "bindings", "search_paths",
                             "output_dir", "force"])
def evaluate_ablation(ablation_model_dir: str, corpus_dir: str, evaluator: str = "zero_shot",
                      gin_files: Sequence[str] = ("runs/eval.gin",), bindings: Sequence[str] = (),
                      search_paths: Sequence[str] = (), output_dir: str = ".",
                      force: bool = False) -> dict[str, float]:
  """The latest checkpoint of a speech-only run, scored by `evaluator`, renamed `*_speech_only_ablation`.

  It is evaluated under its own run's operative config: a model pre-trained without the text and
  paired objectives has a different parameter tree (no cross-modal temperature), so
  the joint run's model cannot apply its parameters. Its reports go to OUTPUT_DIR/speech_only_ablation/
  (and are read back by later sweeps). Replaces the process' gin config.
  """
  # Last, so that model bindings meant for the joint run (objective weights) cannot reach it.
  bindings = list(bindings) + list(zero_shot.SPEECH_ONLY_BINDINGS)
  _parse_run(ablation_model_dir, gin_files, bindings, search_paths, corpus_dir, [evaluator])
  results = evaluate_checkpoints(model_dir=ablation_model_dir, checkpoints="latest",
                                 output_dir=os.path.join(output_dir, "speech_only_ablation"), force=force)
  metrics = results[max(results)]
  return zero_shot.as_ablation({k: v for k, v in metrics.items() if k.startswith("zero_shot")})


def evaluate_run(model_dir: str, **kwargs) -> dict[str, float]:
  """The latest checkpoint's figures (`sweep` keyword arguments), e.g. for `mslam demo`."""
  results = sweep(model_dir, "latest", **kwargs)
  return results[max(results)]


def _binding_name(binding: str) -> str:
  return binding.partition("=")[0].strip()
