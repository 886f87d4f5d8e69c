"""The evaluator protocol and the name -> class table that `registry.build_evaluators` reads.

  evaluator.evaluate(model, params, step, out_dir=None) -> dict[str, float]

`model` follows the MSLAMModel contract (encode_speech / encode_text); `params` may be boxed or
unboxed. `out_dir`, when given, receives the evaluator's plots and artifacts (the trainer's
periodic hook passes none and gets the scalars only). Evaluator modules import this one (to
`register`); registry.py imports them, so that nothing imports in a cycle.
"""
from typing import Any, Callable, Protocol

_REGISTRY: dict[str, Callable[..., "Evaluator"]] = {}


class Evaluator(Protocol):
  name: str

  def evaluate(self, model: Any, params: Any, step: int, out_dir: str | None = None) -> dict[str, float]:
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
