"""`mslam model-info`: parameter counts of a gin-configured MSLAMModel, per component and in total.

The parameters are never allocated: their shapes come from jax.eval_shape of the model's init on
a one-item dummy batch (parameter shapes do not depend on batch or sequence sizes).

  mslam model-info --gin_file=models/mslam_600m.gin [--json] [--depth=2] [--gin.NAME=VALUE ...]
"""
import json
import logging
from typing import Any, Mapping

import flax
import jax
import numpy as np



def count_params(tree: Any) -> int:
  """Total number of scalars in a pytree of arrays or ShapeDtypeStructs."""
  return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree_util.tree_leaves(tree)))


def component_counts(params: Mapping[str, Any], depth: int = 2) -> dict[str, int]:
  """Parameter counts keyed by the '/'-joined path of each subtree `depth` levels down."""
  counts: dict[str, int] = {}

  def visit(tree: Any, path: tuple[str, ...]) -> None:
    if len(path) < depth and isinstance(tree, Mapping):
      for key, value in tree.items():
        visit(value, path + (str(key),))
    else:
      counts["/".join(path)] = count_params(tree)

  visit(params, ())
  return counts


def abstract_params(model) -> Any:
  """The unboxed parameter shapes of `model` (ShapeDtypeStructs; nothing allocated)."""
  batch = model.dummy_batch()
  boxed = jax.eval_shape(model.init, jax.random.key(0), batch)
  return flax.core.meta.unbox(boxed)


def model_info(model, depth: int = 2) -> dict[str, Any]:
  params = abstract_params(model)
  return {
      "total_params": count_params(params),
      "components": component_counts(params, depth),
      "dtypes": sorted({str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(params)}),
  }


def format_table(info: Mapping[str, Any]) -> str:
  rows = sorted(info["components"].items())
  width = max([len(name) for name, _ in rows] + [len("total")])
  lines = [f"{'component':<{width}}  {'params':>15}  {'share':>6}"]
  total = info["total_params"]
  for name, count in rows:
    lines.append(f"{name:<{width}}  {count:>15,}  {count / max(total, 1):>6.1%}")
  lines.append(f"{'total':<{width}}  {total:>15,}  ({total / 1e9:.3f}B)")
  return "\n".join(lines)
