"""The optimizer, outside the model: Adam (or Adafactor) with a warm-up-then-decay schedule.

Schedule (Vaswani et al.; mSLAM, the default `decay="rsqrt"`): linear warm-up to the peak, then
inverse square-root decay,
  lr(t) = peak * min(t / warmup, sqrt(warmup / t)),  t = update count + 1.
The paper's peaks (6e-4 for 600M, 3.6e-4 for 2B, 40k warm-up steps) are bound in the size and
run configs through `make_optimizer.peak_learning_rate` / `warmup_steps`. A short run whose length
is known can decay to its end instead (`decay="cosine"` with `decay_steps`, as big_vision's runs
do): the inverse square root spends most of a few hundred steps far below the peak.
"""
import dataclasses
import logging
from typing import Any, Callable

import gin
import jax
import jax.numpy as jnp
import optax

# Path fragments of parameters that never get weight decay: embeddings and normalization scales
# (biases and other vectors are excluded by rank).
NO_DECAY_NAME_FRAGMENTS = ("embed", "norm", "scale", "bias", "pos", "codebook")


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """An optax transformation plus the schedule it follows (for the learning-rate metric)."""
  tx: optax.GradientTransformation
  schedule: Callable[[jax.Array], jax.Array]
  name: str


@gin.configurable
def transformer_schedule(peak_learning_rate: float, warmup_steps: int) -> optax.Schedule:
  """Linear warm-up to `peak_learning_rate` over `warmup_steps`, then peak * sqrt(warmup / t)."""
  if peak_learning_rate <= 0 or warmup_steps < 1:
    raise ValueError(
        f"transformer_schedule needs peak_learning_rate > 0 and warmup_steps >= 1, got "
        f"{peak_learning_rate}, {warmup_steps}")

  def schedule(count):
    t = jnp.asarray(count, jnp.float32) + 1.0
    return peak_learning_rate * jnp.minimum(t / warmup_steps, jnp.sqrt(warmup_steps / t))

  return schedule


DECAYS = ("rsqrt", "cosine", "constant")


def make_schedule(peak_learning_rate: float, warmup_steps: int, decay: str = "rsqrt",
                  decay_steps: int | None = None, end_fraction: float = 0.0) -> optax.Schedule:
  """Linear warm-up to the peak, then "rsqrt" (transformer_schedule), "cosine" (to
  `end_fraction` x peak at `decay_steps`, the run's length) or "constant"."""
  if decay not in DECAYS:
    raise ValueError(f"make_optimizer.decay={decay!r}; choose one of {DECAYS}")
  # Every decay shares the paper's warm-up: transformer_schedule up to the peak (it checks the
  # peak and the warm-up), then the decay from there.
  paper = transformer_schedule(peak_learning_rate, warmup_steps)
  if decay == "rsqrt":
    return paper
  if decay == "constant":
    return optax.join_schedules([paper, optax.constant_schedule(peak_learning_rate)], [warmup_steps - 1])
  if decay_steps is None or decay_steps <= warmup_steps:
    raise ValueError(f"make_optimizer.decay='cosine' needs decay_steps (the run's length, e.g. %TRAIN_STEPS) "
                     f"above warmup_steps={warmup_steps}, got {decay_steps}")
  cosine = optax.cosine_decay_schedule(peak_learning_rate, decay_steps - warmup_steps, alpha=end_fraction)
  return optax.join_schedules([paper, cosine], [warmup_steps - 1])


def weight_decay_mask(params: Any) -> Any:
  """True where decoupled weight decay applies: matrices and kernels, not embeddings/norms/biases."""

  def decays(path, leaf):
    if jnp.ndim(leaf) < 2:
      return False
    names = [str(getattr(key, "key", getattr(key, "name", key))).lower() for key in path]
    return not any(fragment in name for name in names for fragment in NO_DECAY_NAME_FRAGMENTS)

  return jax.tree_util.tree_map_with_path(decays, params)


@gin.configurable
def make_optimizer(name: str = "adam",
                   peak_learning_rate: float = 6e-4,
                   warmup_steps: int = 40_000,
                   b1: float = 0.9,
                   b2: float = 0.98,
                   eps: float = 1e-6,
                   weight_decay: float = 0.0,
                   clip_grad_norm: float | None = 1.0,
                   adafactor_factored: bool = True,
                   adafactor_decay_rate: float = 0.8,
                   decay: str = "rsqrt",
                   decay_steps: int | None = None,
                   end_fraction: float = 0.0) -> Optimizer:
  """Adam (`name="adam"`, AdamW when weight_decay > 0) or Adafactor, clipped by global norm, on
  make_schedule(peak_learning_rate, warmup_steps, decay, decay_steps, end_fraction)."""
  schedule = make_schedule(peak_learning_rate, warmup_steps, decay, decay_steps, end_fraction)
  chain = []
  if clip_grad_norm:
    chain.append(optax.clip_by_global_norm(clip_grad_norm))
  if name == "adam":
    chain.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    if weight_decay:
      chain.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask))
    chain.append(optax.scale_by_learning_rate(schedule))
  elif name == "adafactor":
    # optax.adafactor applies the learning rate itself and decays weights on its own mask.
    chain.append(optax.adafactor(
        learning_rate=schedule, factored=adafactor_factored, decay_rate=adafactor_decay_rate,
        multiply_by_parameter_scale=False, clipping_threshold=None,
        weight_decay_rate=weight_decay or None,
        weight_decay_mask=weight_decay_mask if weight_decay else None))
  else:
    raise ValueError(f"make_optimizer.name must be 'adam' or 'adafactor', got {name!r}")
  logging.info("Optimizer %s: peak lr %g, warm-up %d, %s decay, clip %s, weight decay %g", name,
               peak_learning_rate, warmup_steps, decay, clip_grad_norm, weight_decay)
  return Optimizer(tx=optax.chain(*chain), schedule=schedule, name=name)
