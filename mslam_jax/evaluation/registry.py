"""Evaluators chosen by name (big_vision style), sharing one protocol with the trainer's hook.

  evaluator.evaluate(model, params, step, out_dir=None) -> dict[str, float]

`model` follows the MSLAMModel contract (encode_speech / encode_text); `params` may be boxed or
unboxed. `out_dir`, when given, receives the evaluator's plots and artifacts (the trainer's
periodic hook passes none and gets the scalars only). Every evaluator class is gin-configurable
under its own name, so a run config selects evaluators with

  mslam_jax.evaluation.registry.build_evaluators.names = ["retrieval", "langid"]
  RetrievalEvaluator.corpus_dir = %CORPUS_DIR
"""
import logging
from typing import Any, Callable, Sequence

import gin

# Importing the evaluator modules runs their @register decorators, so that a run config importing
# only this module can bind their parameters (e.g. RetrievalEvaluator.max_per_lang) by name.
# pylint: disable=unused-import
from mslam_jax.evaluation import alignment, embedding_map, finetune, langid, retrieval, zero_shot
# pylint: enable=unused-import
from mslam_jax.evaluation.base import _REGISTRY, Evaluator, register  # pylint: disable=unused-import


def names() -> list[str]:
  return sorted(_REGISTRY)


def get(name: str) -> Callable[..., Evaluator]:
  if name not in _REGISTRY:
    raise KeyError(f"unknown evaluator {name!r}; known: {sorted(_REGISTRY)} "
                   "(fix build_evaluators.names in gin)")
  return _REGISTRY[name]


@gin.configurable
def build_evaluators(names: Sequence[str] = ()) -> list[Evaluator]:  # pylint: disable=redefined-outer-name
  """Instantiates the named evaluators; their constructor arguments come from gin."""
  evaluators = [get(n)() for n in names]
  logging.info("Evaluators: %s", [e.name for e in evaluators])
  return evaluators


def run_evaluators(evaluators: Sequence[Evaluator], model: Any, params: Any, step: int,
                   out_dir: str | None = None) -> dict[str, float]:
  """Runs each evaluator; one that fails is logged and counted, the others still run."""
  metrics: dict[str, float] = {}
  failed = []
  for evaluator in evaluators:
    try:
      result = evaluator.evaluate(model, params, step, out_dir=out_dir)
    except Exception:  # pylint: disable=broad-except
      logging.exception("Evaluator %r failed at step %d; continuing with the others", evaluator.name, step)
      failed.append(evaluator.name)
      continue
    clash = set(result) & set(metrics)
    if clash:
      logging.warning("Evaluator %r overwrites metrics %s", evaluator.name, sorted(clash))
    metrics.update({k: float(v) for k, v in result.items()})
  metrics["eval_failed_evaluators"] = float(len(failed))
  return metrics
