"""The evaluator protocol, the per-checkpoint context evaluators receive, and the one function that
runs them (the trainer's periodic evaluation and `mslam eval` both call `run_evaluators`).

  evaluator.evaluate(ctx: EvalContext) -> dict[str, float]

An evaluator holds only its settings (gin-configured); everything about the checkpoint under
evaluation (model, parameters, step, run directory, corpus, output directory, seed) comes in the
context, so nothing is read from gin's global macros or kept in module state between checkpoints.
Evaluator modules import this one (to `register`); registry.py imports them, so that nothing
imports in a cycle.
"""
import dataclasses
import logging
import os
import time
from typing import Any, Callable, Protocol, Sequence

from mslam_jax import storage

_REGISTRY: dict[str, Callable[..., "Evaluator"]] = {}

# The count of evaluators that failed on a checkpoint; a report carrying a non-zero one is not final.
FAILED_KEY = "eval_failed_evaluators"
# ... and one key per failed evaluator: eval_failed/<name> = 1.
FAILED_PREFIX = "eval_failed/"


def eval_dir(model_dir: str, out: str | None = None) -> str:
  """Where a run's evaluations go: `out` (`mslam eval --out`), default MODEL_DIR/eval."""
  return out or os.path.join(model_dir, "eval")


def step_eval_dir(model_dir: str, step: int, out: str | None = None) -> str:
  """One checkpoint's evaluation (metrics.json, pictures, saved probes): eval_dir(...)/step_<N>."""
  return os.path.join(eval_dir(model_dir, out), f"step_{step}")


@dataclasses.dataclass
class EvalContext:
  """One checkpoint under evaluation.

  model: follows the MSLAMModel contract (encode_speech / encode_text).
  params: the checkpoint's parameters (boxed or unboxed).
  step: the checkpoint's step.
  model_dir: the run directory (None for parameters from elsewhere); evaluators that train a head
    cache it under model_dir/finetune/.
  corpus_dir: the corpus to evaluate on (an evaluator's own `corpus_dir` setting overrides it).
  out_dir: where plots and artifacts go (None: scalars only).
  seed: for anything random in an evaluation (probes, fine-tuning order).
  """
  model: Any
  params: Any
  step: int
  model_dir: str | None = None
  corpus_dir: str | None = None
  out_dir: str | None = None
  seed: int = 0
  # Results shared by the evaluators of this checkpoint (e.g. one fine-tuned CTC head for the ctc,
  # zero_shot and alignment evaluators); it lives and dies with the context.
  shared: dict = dataclasses.field(default_factory=dict)
  # Compiled programs of `model`, owned by the loop over checkpoints (the sweep, the trainer) and
  # handed to each checkpoint's context, so that a shape compiles once per loop.
  compiled: dict = dataclasses.field(default_factory=dict)

  def corpus(self, override: str | None, owner: str) -> str:
    """The evaluator's own corpus if it names one, else the checkpoint's, else a clear error."""
    corpus_dir = override or self.corpus_dir
    if not corpus_dir:
      raise ValueError(f"no corpus for {owner}: pass --corpus_dir (or bind {owner}.corpus_dir in gin)")
    return corpus_dir


class Evaluator(Protocol):
  name: str

  def evaluate(self, ctx: EvalContext) -> dict[str, float]:
    ...


def register(name: str):
  """Class decorator: makes the evaluator buildable as `name` (`registry.get(name)`)."""

  def wrap(cls):
    if name in _REGISTRY and _REGISTRY[name] is not cls:
      raise ValueError(f"evaluator name {name!r} is already registered to {_REGISTRY[name]}")
    cls.name = name
    _REGISTRY[name] = cls
    return cls

  return wrap


@dataclasses.dataclass
class EvalResult:
  metrics: dict[str, float]   # every evaluator's figures, plus FAILED_KEY
  evaluators: list[str]       # the names that ran
  failed: list[str]           # the names that raised

  @property
  def complete(self) -> bool:
    return not self.failed


def run_evaluators(evaluators: Sequence[Evaluator], ctx: EvalContext) -> EvalResult:
  """Runs each evaluator on `ctx`; one that fails is logged and named, the others still run."""
  if ctx.out_dir:
    storage.makedirs(ctx.out_dir)  # local or remote (gs://...)
  metrics: dict[str, float] = {}
  failed = []
  for evaluator in evaluators:
    start = time.perf_counter()
    try:
      result = evaluator.evaluate(ctx)
    except Exception:  # pylint: disable=broad-except
      logging.exception("Evaluator %r failed at step %d; continuing with the others", evaluator.name, ctx.step)
      failed.append(evaluator.name)
      continue
    logging.info("Evaluator %r at step %d: %.1f s", evaluator.name, ctx.step, time.perf_counter() - start)
    clash = set(result) & set(metrics)
    if clash:
      logging.warning("Evaluator %r overwrites metrics %s", evaluator.name, sorted(clash))
    metrics.update({k: float(v) for k, v in result.items()})
  metrics[FAILED_KEY] = float(len(failed))
  return EvalResult(metrics, [e.name for e in evaluators], failed)
