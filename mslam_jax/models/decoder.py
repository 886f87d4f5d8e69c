"""A Transformer decoder for sequence generation from encoder frames (speech translation).

Pre-LN blocks (Vaswani et al. with the norm before each sub-layer, as T5 and Whisper do):

  x = x + Dropout(CausalSelfAttention(LN(x)))
  x = x + Dropout(CrossAttention(LN(x), encoder frames, encoder mask))
  x = x + Dropout(MLP(LN(x)))

then a final LN and the output projection: the token embedding transposed (tied, scaled by
1/sqrt(D) so that logits start near 0) or a separate kernel. Token embeddings get sinusoidal
positions. Every parameter carries logical axis names (partitioning.py's table).

Inputs are "shifted right": position 0 holds START_ID (the pad id, as T5 does), position t holds
target t-1, and the logits at position t predict target t. Causality comes from the attention mask
alone, so the logits at t never depend on inputs after t: decoding can re-run the whole prefix
buffer each step (no cache to manage; the sequences here are short).
"""
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mslam_jax.layers import attention
from mslam_jax.layers import text_embedding

Array = jax.Array
DType = Any

START_ID = 0  # the pad id starts every decoder input (T5's convention)


def _dense_init(axes: tuple[str, ...]):
  return attention.partitioned(nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"), axes)


def _layer_norm(name: str, dtype: DType, param_dtype: DType) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                      scale_init=attention.partitioned(nn.initializers.ones, ("embed",)),
                      bias_init=attention.partitioned(nn.initializers.zeros, ("embed",)), name=name)


class _Attention(nn.Module):
  """Flax multi-head attention whose kernels carry logical axis names."""
  num_heads: int
  dropout_rate: float
  dtype: DType
  param_dtype: DType

  @nn.compact
  def __call__(self, q: Array, kv: Array, mask: Array, deterministic: bool) -> Array:
    return nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
        dropout_rate=self.dropout_rate, deterministic=deterministic,
        kernel_init=_dense_init(("embed", "heads", "kv")),
        out_kernel_init=_dense_init(("heads", "kv", "embed")),
        bias_init=attention.partitioned(nn.initializers.zeros, ("heads", "kv")),
        out_bias_init=attention.partitioned(nn.initializers.zeros, ("embed",)),
        force_fp32_for_softmax=True, name="attention")(q, kv, mask=mask)


class DecoderLayer(nn.Module):
  """One pre-LN decoder block (see the module docstring)."""
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, self_mask: Array, encoded: Array, cross_mask: Array,
               deterministic: bool = True) -> Array:
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    drop = lambda y: nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    attend = lambda name: _Attention(self.num_heads, self.dropout_rate, **dtypes, name=name)
    h = _layer_norm("self_attention_norm", **dtypes)(x)
    x = x + drop(attend("self_attention")(h, h, self_mask, deterministic))
    h = _layer_norm("cross_attention_norm", **dtypes)(x)
    x = x + drop(attend("cross_attention")(h, encoded, cross_mask, deterministic))
    h = _layer_norm("mlp_norm", **dtypes)(x)
    h = nn.Dense(self.mlp_dim, kernel_init=_dense_init(("embed", "mlp")),
                 bias_init=attention.partitioned(nn.initializers.zeros, ("mlp",)), **dtypes, name="mlp_in")(h)
    h = drop(nn.gelu(h))
    h = nn.Dense(x.shape[-1], kernel_init=_dense_init(("mlp", "embed")),
                 bias_init=attention.partitioned(nn.initializers.zeros, ("embed",)), **dtypes, name="mlp_out")(h)
    return nn.with_logical_constraint(x + drop(h), ("batch", "length", "embed"))


@gin.configurable
class TransformerDecoder(nn.Module):
  """Decoder inputs [B, L] + encoder frames [B, T, De] (mask [B, T]) -> logits [B, L, V].

  Attributes:
    vocab_size: output classes (the corpus vocabulary's size).
    embed_dim / num_layers / num_heads / mlp_dim: the decoder's size (gin; see models/*.gin).
    dropout_rate: on residual branches, attention probabilities and the MLP.
    tie_embedding: logits from the transposed token embedding (else a separate kernel).
    dtype / param_dtype: compute and parameter dtypes.
  Encoder frames of another width than embed_dim are projected to it first.
  """
  vocab_size: int = 4096
  embed_dim: int = 256
  num_layers: int = 4
  num_heads: int = 4
  mlp_dim: int = 1024
  dropout_rate: float = 0.1
  tie_embedding: bool = True
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def setup(self):
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.token_embedding = nn.Embed(
        self.vocab_size, self.embed_dim, embedding_init=attention.partitioned(nn.initializers.normal(1.0),
                                                                             ("vocab", "embed")),
        **dtypes, name="token_embedding")
    self.encoder_projection = nn.Dense(self.embed_dim, kernel_init=_dense_init(("embed", "mlp")),
                                       bias_init=attention.partitioned(nn.initializers.zeros, ("mlp",)),
                                       **dtypes, name="encoder_projection")
    self.layers = [DecoderLayer(self.num_heads, self.mlp_dim, self.dropout_rate, **dtypes, name=f"layers_{i}")
                   for i in range(self.num_layers)]
    self.final_norm = _layer_norm("final_norm", **dtypes)
    self.dropout = nn.Dropout(self.dropout_rate)
    if not self.tie_embedding:
      self.output_projection = nn.Dense(self.vocab_size, kernel_init=_dense_init(("embed", "vocab")),
                                        bias_init=attention.partitioned(nn.initializers.zeros, ("vocab",)),
                                        **dtypes, name="output_projection")

  def __call__(self, inputs: Array, encoded: Array, encoded_mask: Array, deterministic: bool = True) -> Array:
    if encoded.shape[-1] != self.embed_dim:
      encoded = self.encoder_projection(encoded)
    x = self.token_embedding(inputs.astype(jnp.int32))
    x = x + text_embedding.sinusoidal_positions(inputs.shape[1], self.embed_dim).astype(x.dtype)[None]
    x = self.dropout(x, deterministic=deterministic)
    self_mask = nn.make_causal_mask(inputs, dtype=jnp.bool_)
    cross_mask = nn.make_attention_mask(jnp.ones(inputs.shape, jnp.bool_), encoded_mask != 0, dtype=jnp.bool_)
    for layer in self.layers:
      x = layer(x, self_mask, encoded, cross_mask, deterministic)
    x = self.final_norm(x)
    if self.tie_embedding:
      logits = self.token_embedding.attend(x) / jnp.sqrt(jnp.asarray(self.embed_dim, x.dtype))
    else:
      logits = self.output_projection(x)
    return nn.with_logical_constraint(logits.astype(jnp.float32), ("batch", "length", "vocab"))


def shift_right(targets: Array, start_id: int = START_ID) -> Array:
  """Decoder inputs of `targets` [B, L]: START_ID, then targets[:, :-1]."""
  return jnp.concatenate([jnp.full_like(targets[:, :1], start_id), targets[:, :-1]], axis=1)
