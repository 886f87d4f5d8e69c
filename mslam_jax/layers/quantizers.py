"""Quantizers that turn speech features into discrete targets.

* GumbelVectorQuantizer: wav2vec 2.0's product quantizer as w2v-BERT uses it (G groups of V
  learned entries; Gumbel-softmax with straight-through hard selection in training; a diversity
  loss that pushes the batch-averaged softmax towards uniform use of all entries).
* RandomProjectionQuantizer: BEST-RQ (Chiu et al. 2022). A frozen random projection and a frozen
  random codebook, both l2-normalized at use; ids are nearest neighbours (cosine). Nothing to
  learn, so the codebook cannot collapse (USM's finding at 2B).

Both return a QuantizerOutput with the same fields.

Frozen parameters: BEST-RQ's projection and codebook live in the ordinary "params" collection
(so checkpoints, sharding and the model's `init -> params` contract treat them like any other
parameter), under names starting with FROZEN_PREFIX, and are used through jax.lax.stop_gradient,
so their gradient is exactly zero. Adam-style updates of a zero gradient are zero, but decoupled
weight decay is not: an optimizer should skip them, e.g.
`optax.masked(optax.add_decayed_weights(wd), trainable_mask(params))` or
`optax.multi_transform({..., "frozen": optax.set_to_zero()}, frozen_labels)`.
"""
import math
from typing import Any

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mslam_jax.layers import attention
from mslam_jax.layers import logmel

Array = jax.Array
DType = Any

FROZEN_PREFIX = "frozen_"


@gin.configurable
def gumbel_temperature(step: Any, start: float = 2.0, end: float = 0.5, decay: float = 0.999995) -> Array:
  """wav2vec 2.0's annealing: max(start * decay**step, end). Works on Python ints and traced steps."""
  step = jnp.asarray(step, jnp.float32)
  # decay**step in float32 loses ~1e-3 at 1e5 steps (decay's own rounding); log(decay) in float64
  # first keeps it exact to float32 precision.
  return jnp.maximum(start * jnp.exp(step * math.log(decay)), end)


@flax.struct.dataclass
class QuantizerOutput:
  """What every quantizer returns (a pytree).

  quantized: [B, T, G * entry_dim] the selected entries (straight-through in Gumbel training).
  ids: int32 [B, T, G] the selected entry per group (targets for masked prediction).
  diversity_loss: scalar (G*V - perplexity) / (G*V); 0 for BEST-RQ (nothing to learn).
  perplexity: scalar sum over groups of exp(entropy) of the batch-averaged softmax over valid
    frames (Gumbel: soft probabilities, as in the diversity loss; BEST-RQ: hard assignments).
  code_perplexity: scalar, the same figure from the hard selections (ids).
  usage: scalar, share of entries selected at least once in the batch (mean over groups).
  """
  quantized: Array
  ids: Array
  diversity_loss: Array
  perplexity: Array
  code_perplexity: Array
  usage: Array


def _batch_average(values: Array, mask: Array) -> Array:
  """[B, T, G, V] averaged over valid frames -> [G, V]."""
  valid = (mask != 0)[:, :, None, None]
  count = jnp.maximum(jnp.sum(mask != 0), 1).astype(jnp.float32)
  return jnp.sum(jnp.where(valid, values, 0.0), axis=(0, 1)) / count


def _perplexity(avg_probs: Array) -> Array:
  """Sum over groups of exp(entropy) of [G, V] distributions (fairseq's +1e-7 guard)."""
  return jnp.sum(jnp.exp(-jnp.sum(avg_probs * jnp.log(avg_probs + 1e-7), axis=-1)))


def _hard_statistics(ids: Array, mask: Array, num_entries: int) -> tuple[Array, Array]:
  """(code perplexity, usage) of hard selections ids [B, T, G] over valid frames."""
  one_hot = jax.nn.one_hot(ids, num_entries, dtype=jnp.float32)
  avg = _batch_average(one_hot, mask)
  usage = jnp.mean(jnp.sum(avg > 0, axis=-1) / num_entries)
  return _perplexity(avg), usage


@gin.configurable
class GumbelVectorQuantizer(nn.Module):
  """wav2vec 2.0 / w2v-BERT product quantizer.

  Attributes:
    num_groups: G codebooks (1 in w2v-BERT).
    num_entries: V entries per group (1024).
    codevector_dim: size of the concatenated quantized vector; each group's entries have
      codevector_dim // num_groups dims.
    rng_collection: rng stream for the Gumbel noise in training.
    utterance_norm: standardize each feature over the valid frames of its utterance before the
      logit projection (cepstral mean and variance normalization, CMVN). Off in fairseq2 and HF.
      Frames of one utterance share a large component (speaker, channel) that steers an untrained
      projection to few codes: on the tiny model 18 of 64 codes at the start, which the diversity
      term spreads over ~24 steps while the targets churn; with it, 40 of 64 from the first step,
      the same contrastive accuracy after 1,500 steps (benchmarks/README.md).

  Feed it layer-normed features (MSLAMEncoder.normalize_speech_features). Its logit projection
  starts at N(0, 1) with a zero bias, as in fairseq2 and HF transformers: on unit-scale inputs the
  logits then differ by O(sqrt(F)), so each frame starts with a confident, input-determined code
  (two Gumbel draws of a frame agree) while different frames pick different codes. At
  lecun-normal scale the logits are O(1), Gumbel noise dominates and the targets are noise.
  """
  num_groups: int = 1
  num_entries: int = 1024
  codevector_dim: int = 1024
  rng_collection: str = "dropout"
  utterance_norm: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, features: Array, mask: Array, temperature: Any = 2.0,
               deterministic: bool = True) -> QuantizerOutput:
    if self.codevector_dim % self.num_groups:
      raise ValueError(f"GumbelVectorQuantizer.codevector_dim={self.codevector_dim} is not divisible "
                       f"by num_groups={self.num_groups}")
    batch, length, _ = features.shape
    groups, entries = self.num_groups, self.num_entries
    if self.utterance_norm:  # the frontend's CMVN, here on the codebook's input (population variance)
      features = logmel.normalize_per_utterance(features, mask, epsilon=1e-5, ddof=0).astype(features.dtype)
    logits = nn.Dense(
        groups * entries, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=attention.partitioned(nn.initializers.normal(1.0), (None, "codebook")),
        bias_init=attention.partitioned(nn.initializers.zeros, ("codebook",)), name="logits")(features)
    logits = logits.astype(jnp.float32).reshape(batch, length, groups, entries)
    codebook = self.param(
        "codebook", attention.partitioned(nn.initializers.uniform(1.0), (None, "codebook", None)),
        (groups, entries, self.codevector_dim // groups), self.param_dtype)

    if deterministic:
      ids = first_argmax(logits)
      selection = jax.nn.one_hot(ids, entries, dtype=jnp.float32)
    else:
      gumbel = jax.random.gumbel(self.make_rng(self.rng_collection), logits.shape, jnp.float32)
      soft = jax.nn.softmax((logits + gumbel) / temperature, axis=-1)
      ids = first_argmax(soft)
      hard = jax.nn.one_hot(ids, entries, dtype=jnp.float32)
      selection = hard + soft - jax.lax.stop_gradient(soft)  # straight-through
    quantized = jnp.einsum("btgv,gvd->btgd", selection.astype(self.dtype), jnp.asarray(codebook, self.dtype))
    quantized = quantized.reshape(batch, length, self.codevector_dim)

    avg_probs = _batch_average(jax.nn.softmax(logits, axis=-1), mask)
    perplexity = _perplexity(avg_probs)
    code_perplexity, usage = _hard_statistics(ids, mask, entries)
    total = groups * entries
    return QuantizerOutput(
        quantized=nn.with_logical_constraint(quantized, ("batch", "length", None)),
        ids=ids.astype(jnp.int32), diversity_loss=(total - perplexity) / total, perplexity=perplexity,
        code_perplexity=code_perplexity, usage=usage)


@gin.configurable
class RandomProjectionQuantizer(nn.Module):
  """BEST-RQ: frozen random projection + frozen random codebook, nearest neighbour by cosine.

  Attributes:
    num_groups: independent codebooks (1 in BEST-RQ; USM used 1 to 16).
    num_entries: entries per codebook (BEST-RQ 8192; 1024 here to match w2v-BERT targets).
    entry_dim: projected dimension per group (16 in BEST-RQ).
    normalize_input: per-frame mean/variance normalization of the input (BEST-RQ normalizes).

  `temperature` and `deterministic` are accepted for a common signature and ignored: the ids
  never depend on training mode or rng.
  """
  num_groups: int = 1
  num_entries: int = 1024
  entry_dim: int = 16
  normalize_input: bool = True
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, features: Array, mask: Array, temperature: Any = None,
               deterministic: bool = True) -> QuantizerOutput:
    del temperature, deterministic
    batch, length, dim = features.shape
    groups, entries = self.num_groups, self.num_entries
    projection = self.param(
        FROZEN_PREFIX + "projection",
        attention.partitioned(nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)), (None, None, None)),
        (dim, groups, self.entry_dim), self.param_dtype)
    codebook = self.param(
        FROZEN_PREFIX + "codebook", attention.partitioned(nn.initializers.normal(1.0), (None, "codebook", None)),
        (groups, entries, self.entry_dim), self.param_dtype)
    projection = jax.lax.stop_gradient(jnp.asarray(projection, jnp.float32))
    codebook = jax.lax.stop_gradient(jnp.asarray(codebook, jnp.float32))
    codebook = codebook / jnp.linalg.norm(codebook, axis=-1, keepdims=True).clip(1e-6)

    x = jax.lax.stop_gradient(features.astype(jnp.float32))
    if self.normalize_input:
      mean = jnp.mean(x, axis=-1, keepdims=True)
      x = (x - mean) * jax.lax.rsqrt(jnp.var(x, axis=-1, keepdims=True) + 1e-5)
    projected = jnp.einsum("btd,dge->btge", x, projection, precision=jax.lax.Precision.HIGHEST)
    projected = projected / jnp.linalg.norm(projected, axis=-1, keepdims=True).clip(1e-6)
    # For unit vectors the nearest neighbour in l2 is the one of largest cosine. One product per
    # group: a batched one puts the group axis first and transposes [B, T, G, V] scores back (5.7 ms
    # of the tiny float32 step on XLA:CPU for G = 1).
    ids = jnp.stack([first_argmax(jnp.einsum("bte,ve->btv", projected[:, :, g], codebook[g],
                                             precision=jax.lax.Precision.HIGHEST))
                     for g in range(groups)], axis=-1)
    quantized = codebook[jnp.arange(groups)[None, None, :], ids]  # [B, T, G, entry_dim]
    quantized = quantized.reshape(batch, length, groups * self.entry_dim).astype(self.dtype)
    code_perplexity, usage = _hard_statistics(ids, mask, entries)
    return QuantizerOutput(
        quantized=quantized, ids=ids, diversity_loss=jnp.zeros((), jnp.float32),
        perplexity=code_perplexity, code_perplexity=code_perplexity, usage=usage)


def first_argmax(x: Array) -> Array:
  """jnp.argmax over the last axis (the first of tied maxima), as int32, by a max and a min: XLA:CPU
  runs argmax's variadic reduce about 3 times slower (the BEST-RQ targets' 6.4 ms of the tiny step)."""
  largest = jnp.max(x, axis=-1, keepdims=True)
  positions = jax.lax.broadcasted_iota(jnp.int32, x.shape, x.ndim - 1)
  # No position equals a NaN maximum: the last entry then, never one past it.
  return jnp.minimum(jnp.min(jnp.where(x == largest, positions, x.shape[-1]), axis=-1), x.shape[-1] - 1)


def _is_frozen_path(path: tuple[Any, ...]) -> bool:
  return any(str(getattr(k, "key", getattr(k, "name", k))).startswith(FROZEN_PREFIX) for k in path)


def frozen_labels(params: Any) -> Any:
  """Pytree of "frozen" / "trainable" labels (for optax.multi_transform)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: "frozen" if _is_frozen_path(path) else "trainable", params)


def trainable_mask(params: Any) -> Any:
  """Pytree of bools, False for frozen parameters (for optax.masked)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: not _is_frozen_path(path), params)
