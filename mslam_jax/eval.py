"""gin-configured evaluation sweeps over a run's checkpoints: `mslam eval` or `python -m mslam_jax.eval`.

  mslam eval --gin.MODEL_DIR=/tmp/run [--checkpoint latest|all|STEP] [--ablation_model_dir DIR]

The run's own `operative_config.gin` (written by the trainer into MODEL_DIR) supplies the model and
the corpus; runs/eval.gin picks the evaluators. Each checkpoint's figures go to
MODEL_DIR/eval/step_<N>/ (metrics.json, report.md, plots); a checkpoint that already has its
metrics.json is skipped unless --force, so a sweep can be rerun as training goes on (t5x style).
"""
import argparse
import json
import logging
import os
import re
import sys
from typing import Any, Sequence

import gin

from mslam_jax import config

CHECKPOINTS_SUBDIR = "checkpoints"


# -- checkpoints -------------------------------------------------------------------------------

def checkpoint_steps(model_dir: str) -> list[int]:
  """Finished checkpoints of a run (Orbax renames a checkpoint to its bare step once committed)."""
  directory = os.path.join(model_dir, CHECKPOINTS_SUBDIR)
  if not os.path.isdir(directory):
    return []
  return sorted(int(name) for name in os.listdir(directory)
                if re.fullmatch(r"\d+", name) and os.path.isdir(os.path.join(directory, name, "state")))


def select_steps(model_dir: str, which: str | int) -> list[int]:
  """'latest', 'all', or one step number."""
  steps = checkpoint_steps(model_dir)
  if not steps:
    raise FileNotFoundError(f"no checkpoints under {os.path.join(model_dir, CHECKPOINTS_SUBDIR)}")
  if which == "all":
    return steps
  if which == "latest":
    return steps[-1:]
  step = int(which)
  if step not in steps:
    raise FileNotFoundError(f"no checkpoint for step {step} in {model_dir} (have {steps})")
  return [step]


def restore_params(model_dir: str, step: int) -> Any:
  """The parameters of one checkpoint on this process' first device, whatever mesh wrote it."""
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  step_dir = os.path.join(os.path.abspath(model_dir), CHECKPOINTS_SUBDIR, str(step))
  state = checkpoints.load_state_dict(step_dir)
  if "params" not in state:
    raise ValueError(f"{step_dir} holds no 'params' (keys: {sorted(state)})")
  return state["params"]


# -- the model of a run ------------------------------------------------------------------------

def _import_configurables() -> None:
  # The operative config names configurables from these modules; each registers on import.
  import importlib  # pylint: disable=g-import-not-at-top
  for name in ("mslam_jax.models.mslam", "mslam_jax.train", "mslam_jax.trainer", "mslam_jax.optimizers",
               "mslam_jax.partitioning", "mslam_jax.data.pipeline", "mslam_jax.tasks.builtin"):
    try:
      importlib.import_module(name)
    except ImportError as e:
      logging.debug("Not importing %s: %s", name, e)


def _macro_values() -> dict[str, Any]:
  """Macros bound to a value (not %gin.REQUIRED) in the current config."""
  values = {}
  for (name, selector), params in gin.config._CONFIG.items():  # pylint: disable=protected-access
    if selector == "gin.macro" and "value" in params:
      value = params["value"]
      if not (isinstance(value, gin.config.ConfigurableReference) and str(value) == "%gin.REQUIRED"):
        values[name] = value
  return values


def parse_run_config(model_dir: str, gin_files: Sequence[str] = (), bindings: Sequence[str] = (),
                     search_paths: Sequence[str] = ()) -> None:
  """The run's operative config, then the eval gin files, then flag bindings (later wins).

  The eval files come after the run's config so that they choose the evaluators (a pre-training
  config names none); the macros the run set (CORPUS_DIR, MODEL_DIR, ...) survive the eval
  files' `= %gin.REQUIRED` declarations.
  """
  _import_configurables()
  for directory in list(search_paths) + [config.package_gin_dir()]:
    gin.add_config_file_search_path(directory)
  operative = os.path.join(model_dir, "operative_config.gin")
  run_macros = {}
  if os.path.exists(operative):
    gin.parse_config_files_and_bindings([operative], [], finalize_config=False, skip_unknown=True)
    run_macros = _macro_values()
  else:
    logging.warning("%s not found: the model and corpus must come from --gin_file/--gin flags", operative)
  files = [config.resolve_gin_file(f, search_paths) for f in gin_files]
  gin.parse_config_files_and_bindings(files, [], finalize_config=False, skip_unknown=True)
  restored = [f"{name} = {value!r}" for name, value in run_macros.items()
              if name not in _macro_values() and not isinstance(value, gin.config.ConfigurableReference)]
  gin.parse_config_files_and_bindings([], restored + list(bindings), finalize_config=False, skip_unknown=True)


def model_from_gin() -> Any:
  """The run's model: the trainer's `train.model` (bind evaluate_checkpoints.model to override)."""
  for name in ("train.model",):
    try:
      ref = gin.query_parameter(name)
    except ValueError:
      continue
    if isinstance(ref, gin.config.ConfigurableReference):
      return ref.scoped_configurable_fn() if ref.evaluate else ref.scoped_configurable_fn
    return ref
  raise ValueError("no model configured: bind train.model (the run's operative_config.gin does) "
                   "or evaluate_checkpoints.model")


# -- the sweep ---------------------------------------------------------------------------------

@gin.configurable
def evaluate_checkpoints(model_dir: str = gin.REQUIRED, model: Any = None, checkpoints: str | int = "latest",
                         output_dir: str | None = None, evaluators: Sequence[Any] | None = None,
                         extra_metrics: dict[str, float] | None = None,
                         force: bool = False) -> dict[int, dict[str, float]]:
  """Evaluates checkpoints of `model_dir`; returns {step: metrics} (skipped ones read back).

  `extra_metrics` join every checkpoint's report (the speech-only ablation's figures, which
  `evaluate_ablation` computes under the ablation run's own config).
  """
  from mslam_jax.evaluation import registry, report  # pylint: disable=g-import-not-at-top
  model = model if model is not None else model_from_gin()
  evaluators = list(evaluators) if evaluators is not None else registry.build_evaluators()
  if not evaluators:
    raise ValueError("no evaluators: set build_evaluators.names in gin (runs/eval.gin lists them)")
  output_dir = output_dir or os.path.join(model_dir, "eval")
  extra = dict(extra_metrics or {})
  results = {}
  for step in select_steps(model_dir, checkpoints):
    out_dir = os.path.join(output_dir, f"step_{step}")
    checkpoint_dir = os.path.join(model_dir, CHECKPOINTS_SUBDIR, str(step))
    previous = report.read_checkpoint_metrics(out_dir)
    if previous is not None and not force:
      logging.info("Step %d already evaluated (%s); skipping", step, out_dir)
      if any(previous.get(k) != v for k, v in extra.items()):  # e.g. an ablation added later
        previous.update(extra)
        report.write_checkpoint_report(out_dir, step, previous, checkpoint_dir)
      results[step] = previous
      continue
    logging.info("Evaluating step %d of %s with %s", step, model_dir, [e.name for e in evaluators])
    params = restore_params(model_dir, step)
    metrics = registry.run_evaluators(evaluators, model, params, step, out_dir=out_dir)
    metrics.update(extra)
    report.write_checkpoint_report(out_dir, step, metrics, checkpoint_dir)
    results[step] = metrics
    del params
  report.write_sweep_report(output_dir, results)
  logging.info("Evaluation report: %s", os.path.join(output_dir, report.REPORT_FILE))
  return results


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
  output_dir = output_dir or os.path.join(model_dir, "eval")
  extra = [f"CORPUS_DIR = '{corpus_dir}'"] if corpus_dir else []
  if evaluators is not None:
    extra.append(f"build_evaluators.names = {list(evaluators)!r}")
  run_bindings = [f"MODEL_DIR = '{model_dir}'"] + list(bindings) + extra

  def parse_main_run():
    from mslam_jax import train  # pylint: disable=g-import-not-at-top
    gin.clear_config()
    parse_run_config(model_dir, gin_files, run_bindings, search_paths)
    train.check_required_macros()

  ablation = {}
  if ablation_model_dir:
    parse_main_run()  # for its CORPUS_DIR: the ablation is scored on the same corpus
    ablation = evaluate_ablation(ablation_model_dir, gin.query_parameter("%CORPUS_DIR"), gin_files=gin_files,
                                 bindings=[b for b in bindings if _binding_name(b) != "MODEL_DIR"],
                                 search_paths=search_paths, output_dir=output_dir, force=force)
  parse_main_run()
  return evaluate_checkpoints(model_dir=model_dir, checkpoints=checkpoints, output_dir=output_dir,
                              extra_metrics=ablation, force=force)


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
  from mslam_jax.evaluation import zero_shot  # pylint: disable=g-import-not-at-top
  # Last, so that model bindings meant for the joint run (objective weights) cannot reach it.
  bindings = list(bindings) + list(zero_shot.SPEECH_ONLY_BINDINGS)
  results = sweep(ablation_model_dir, "latest", corpus_dir=corpus_dir, evaluators=[evaluator], gin_files=gin_files,
                  bindings=bindings, search_paths=search_paths,
                  output_dir=os.path.join(output_dir, "speech_only_ablation"), force=force)
  metrics = results[max(results)]
  return zero_shot.as_ablation({k: v for k, v in metrics.items() if k.startswith("zero_shot")})


def evaluate_run(model_dir: str, **kwargs) -> dict[str, float]:
  """The latest checkpoint's figures (`sweep` keyword arguments), e.g. for `mslam demo`."""
  results = sweep(model_dir, "latest", **kwargs)
  return results[max(results)]


# -- command line ------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
  config.add_gin_arguments(parser)
  parser.add_argument("--model_dir", default=None, help="the run to evaluate (same as --gin.MODEL_DIR)")
  parser.add_argument("--corpus_dir", default=None, help="the corpus to evaluate on (default: the run's CORPUS_DIR)")
  parser.add_argument("--checkpoint", default="latest", help="latest (default), all, or a step number")
  parser.add_argument("--output_dir", default=None, help="default: MODEL_DIR/eval")
  parser.add_argument("--ablation_model_dir", default=None,
                      help="a speech-only pre-trained run: adds zero_shot_*_speech_only_ablation figures")
  parser.add_argument("--force", action="store_true", help="re-evaluate checkpoints already evaluated")


def run(args: argparse.Namespace) -> int:
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
  from mslam_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  bindings = list(args.gin_bindings)
  if args.model_dir:
    bindings.append(f"MODEL_DIR = '{args.model_dir}'")
  if args.corpus_dir:
    bindings.append(f"CORPUS_DIR = '{args.corpus_dir}'")
  model_dir = args.model_dir or _macro_from_bindings(bindings, "MODEL_DIR")
  if not model_dir:
    print("mslam eval: pass --model_dir (or --gin.MODEL_DIR=...)", file=sys.stderr)
    return 2
  try:
    results = sweep(model_dir, args.checkpoint, ablation_model_dir=args.ablation_model_dir,
                    gin_files=args.gin_file or ["runs/eval.gin"], bindings=bindings,
                    search_paths=args.gin_search_path, output_dir=args.output_dir, force=args.force)
  except (ValueError, FileNotFoundError) as e:
    logging.error("mslam eval: %s", e)
    print(f"mslam eval: {e}", file=sys.stderr)
    return 2
  config.log_operative_config()
  for step, metrics in sorted(results.items()):
    print(json.dumps({"step": step, **report.headline(metrics)}))
  return 0


def _binding_name(binding: str) -> str:
  return binding.partition("=")[0].strip()


def _macro_from_bindings(bindings: Sequence[str], name: str) -> str | None:
  for binding in bindings:
    if _binding_name(binding) == name:
      return binding.partition("=")[2].strip().strip("'\"")
  return None


def main(argv: Sequence[str] | None = None) -> int:
  from mslam_jax import cli  # pylint: disable=g-import-not-at-top
  return cli.main(["eval"] + (sys.argv[1:] if argv is None else list(argv)))


if __name__ == "__main__":
  sys.exit(main())
