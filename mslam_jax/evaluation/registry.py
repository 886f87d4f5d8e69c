"""Evaluators chosen by name (big_vision style); the protocol and `run_evaluators` are in base.py.

Every evaluator class is gin-configurable under its own name, so a run config selects evaluators
with

  mslam_jax.evaluation.registry.build_evaluators.names = ["retrieval", "langid"]
  RetrievalEvaluator.max_per_lang = 50

The corpus comes with each checkpoint's context (base.EvalContext); an evaluator's own
`corpus_dir` binding overrides it.
"""
import logging
from typing import Callable, Sequence

import gin

# Importing the evaluator modules runs their @register decorators, so that a run config importing
# only this module can bind their parameters (e.g. RetrievalEvaluator.max_per_lang) by name.
# pylint: disable=unused-import
from mslam_jax.evaluation import alignment, downstream, embedding_map, langid, retrieval, translation, zero_shot
# pylint: enable=unused-import
from mslam_jax.evaluation.base import _REGISTRY, EvalContext, Evaluator, register, run_evaluators  # pylint: disable=unused-import


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

