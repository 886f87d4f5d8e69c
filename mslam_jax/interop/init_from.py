"""Initialize part of a model's parameters from another checkpoint (e.g. a converted w2v-BERT 2.0).

`initialize_from_checkpoint(params, checkpoint=..., include=...)` replaces every leaf of `params`
whose '/'-joined path matches one of the `include` patterns by the checkpoint's leaf at the same
path, placed with the target leaf's sharding; everything else keeps its fresh initialization.
The defaults take the speech encoder (frontend, projection, speech-only and shared stacks, mask
embedding): what `mslam convert from-hf` imports. gin:

  initialize_from_checkpoint.checkpoint = "/tmp/w2vbert2"      # run or checkpoint directory
  initialize_from_checkpoint.include = [r"encoder/shared/.*"]  # optional: only some stacks
"""
import logging
import re
from typing import Any, Sequence

import gin
import jax
import numpy as np

SPEECH_ENCODER = (r"encoder/(frontend|speech_projection|speech_lower|speech_upper|shared)/.*",
                  r"encoder/speech_mask_embedding")


def _path(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _place(value: np.ndarray, like: Any) -> Any:
  """`value` with the dtype of `like`, on its sharding when it has one (any mesh, any host count)."""
  value = np.asarray(value).astype(like.dtype)
  sharding = getattr(like, "sharding", None)
  if sharding is None:
    return value
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def merge_params(params: Any, source: Any, include: Sequence[str] = SPEECH_ENCODER) -> tuple[Any, list[str]]:
  """(params with the leaves matching `include` taken from `source`, the paths taken).

  `params` may hold arrays or ShapeDtypeStructs with shardings; `source` nested dicts of arrays.
  Raises ValueError when a matching leaf is missing from `source` or has another shape, or when
  nothing matches.
  """
  patterns = [re.compile(p) for p in include]
  flat_source = {_path(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(source)[0]}
  taken: list[str] = []

  def pick(path, leaf):
    name = _path(path)
    if not any(p.fullmatch(name) for p in patterns):
      return leaf
    if name not in flat_source:
      raise ValueError(f"the initialization checkpoint has no parameter {name!r} (it matches "
                       f"initialize_from_checkpoint.include={list(include)}); its model differs from this one")
    value = flat_source[name]
    if tuple(np.shape(value)) != tuple(leaf.shape):
      raise ValueError(f"parameter {name!r} is {tuple(leaf.shape)} here but {tuple(np.shape(value))} in the "
                       "initialization checkpoint: the model configs differ (e.g. scan_layers, layer counts)")
    taken.append(name)
    return _place(value, leaf)

  merged = jax.tree_util.tree_map_with_path(pick, params)
  if not taken:
    raise ValueError(f"initialize_from_checkpoint.include={list(include)} matches no parameter of the model")
  return merged, taken


@gin.configurable
def initialize_from_checkpoint(params: Any, checkpoint: str = gin.REQUIRED, include: Sequence[str] = SPEECH_ENCODER,
                               step: int | None = None) -> Any:
  """`params` (unboxed arrays or ShapeDtypeStructs, e.g. train.train's abstract ones) with the
  `include`d leaves from `checkpoint`.

  `checkpoint`: a run directory (its latest step, or `step`) or one checkpoint's directory, whose
  state holds "params" (a training run's or `mslam convert from-hf`'s).
  """
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  _, step_dir = checkpoints.resolve_checkpoint(checkpoint, step)
  merged, taken = merge_params(params, checkpoints.load_params(step_dir), include)
  logging.info("Initialized %d parameter arrays from %s (e.g. %s)", len(taken), step_dir, ", ".join(taken[:3]))
  return merged
