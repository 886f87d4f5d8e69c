"""Conformer blocks and stacks (macaron FFNs, relative-position MHSA, depthwise conv module).

One block (Gulati et al. 2020, as w2v-BERT / mSLAM use it):

  x = x + 0.5 * FFN(LN(x))
  x = x + Dropout(MHSA(LN(x), mask))
  x = x + ConvModule(x, mask)          # LN, pointwise conv + GLU, depthwise conv, norm, act, pointwise
  x = LN(x + 0.5 * FFN(LN(x)))

The options cover HF transformers' Wav2Vec2BertEncoderLayer: `position_type="relative_key"` with
left/right clipping, `conv_kernel_size=31`, `conv_causal=True`, `conv_norm="layer_norm"`,
`conv_use_bias=False`, `layer_norm_epsilon=1e-5`, activation "swish".

Padding never leaks into valid frames: the conv module zeroes padded frames before each
convolution and its group norm takes statistics over valid frames only; attention never attends
padded keys. So the outputs for a clip do not depend on how much padding its batch carries.

`ConformerStack` stacks `num_layers` blocks either with nn.scan (parameters stacked on a leading
"layers" axis; one compiled block) or unrolled (`layers_0`, `layers_1`, ...), each optionally under
nn.remat with a policy named in REMAT_POLICIES. Both layouts compute the same function;
`stack_layer_params` / `unstack_layer_params` convert between them.
"""
from typing import Any, Callable, Mapping

from flax.core import meta
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mslam_jax.layers import attention
from mslam_jax.layers import fence
from mslam_jax.layers import matmul

Array = jax.Array
DType = Any

ACTIVATIONS: Mapping[str, Callable[[Array], Array]] = {
    "swish": nn.swish,
    "silu": nn.swish,
    "relu": nn.relu,
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: nn.gelu(x, approximate=True),
}

# Remat policies by name: "none" disables remat; the others are jax.checkpoint_policies.
REMAT_POLICIES: Mapping[str, Any] = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "everything_saveable": jax.checkpoint_policies.everything_saveable,
}

CONV_NORMS = ("group_norm", "layer_norm")


def get_activation(name: str) -> Callable[[Array], Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f"activation {name!r} is not one of {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def layer_norm(epsilon: float, dtype: DType, param_dtype: DType, axis_name: str = "embed",
               name: str | None = None) -> nn.LayerNorm:
  """LayerNorm with logically partitioned scale/bias and a two-pass (stable) variance."""
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
      scale_init=attention.partitioned(nn.initializers.ones, (axis_name,)),
      bias_init=attention.partitioned(nn.initializers.zeros, (axis_name,)), name=name)


def dense(features: int, axes: tuple[str, str], use_bias: bool, dtype: DType, param_dtype: DType,
          name: str | None = None) -> nn.Dense:
  return nn.Dense(
      features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype, dot_general=matmul.dot_general,
      kernel_init=attention.partitioned(nn.initializers.lecun_normal(), axes),
      bias_init=attention.partitioned(nn.initializers.zeros, (axes[1],)), name=name)


class MaskedGroupNorm(nn.Module):
  """Group norm over (time, channels of a group) of [B, T, C], statistics over valid frames only."""
  num_groups: int
  epsilon: float = 1e-5
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  axis_name: str = "mlp"

  @nn.compact
  def __call__(self, x: Array, mask: Array) -> Array:
    batch, length, channels = x.shape
    if channels % self.num_groups:
      raise ValueError(f"ConformerStack.conv_norm_groups={self.num_groups} does not divide the model "
                       f"dim {channels}")
    grouped = x.astype(jnp.float32).reshape(batch, length, self.num_groups, channels // self.num_groups)
    valid = mask.astype(bool)[:, :, None, None]
    count = jnp.maximum(jnp.sum(valid, axis=(1,), keepdims=True) * grouped.shape[-1], 1)
    mean = jnp.sum(jnp.where(valid, grouped, 0.0), axis=(1, 3), keepdims=True) / count
    centered = grouped - mean
    var = jnp.sum(jnp.where(valid, centered * centered, 0.0), axis=(1, 3), keepdims=True) / count
    normed = (centered * jax.lax.rsqrt(var + self.epsilon)).reshape(batch, length, channels)
    scale = self.param("scale", attention.partitioned(nn.initializers.ones, (self.axis_name,)),
                       (channels,), self.param_dtype)
    bias = self.param("bias", attention.partitioned(nn.initializers.zeros, (self.axis_name,)),
                      (channels,), self.param_dtype)
    return (normed * jnp.asarray(scale, jnp.float32) + jnp.asarray(bias, jnp.float32)).astype(self.dtype)


def depthwise_conv1d(x: Array, kernel: Array, padding: tuple[int, int], impl: str = "auto") -> Array:
  """Depthwise 1-D convolution (cross-correlation) of [B, T, C] with a [K, 1, C] kernel.

  impl "grouped": XLA's grouped convolution (feature_group_count=C).
  impl "shifts": a sum of K shifted multiply-adds, which XLA fuses with the ops around it. XLA's CPU
    backend runs grouped convolutions (and their backward) as a naive loop, 50-100x slower than
    this at Conformer sizes; on an H200 the mslam_600m train step took 308 ms with it against
    388 ms grouped (benchmarks/README.md).
  impl "auto": "grouped" on TPU (not measured against "shifts" there), else "shifts".
  """
  if impl == "auto":
    impl = "grouped" if jax.default_backend() == "tpu" else "shifts"
  if impl == "grouped":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=(1,), padding=[padding], dimension_numbers=("NWC", "WIO", "NWC"),
        feature_group_count=x.shape[-1])
  if impl != "shifts":
    raise ValueError(f"depthwise_conv1d impl={impl!r}; choose 'auto', 'grouped' or 'shifts'")
  length = x.shape[1]
  padded = jnp.pad(x, ((0, 0), padding, (0, 0)))
  taps = kernel[:, 0, :]
  out = padded[:, 0:length] * taps[0]
  for k in range(1, kernel.shape[0]):
    out = out + padded[:, k:k + length] * taps[k]
  return out


class DepthwiseConv1D(nn.Module):
  """Depthwise conv over time with nn.Conv's parameters ("kernel" [K, 1, C], "bias" [C]) and
  initializers, so checkpoints and the HF weight mapping see no difference; see depthwise_conv1d."""
  kernel_size: int
  padding: tuple[int, int]
  use_bias: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    channels = x.shape[-1]
    kernel = self.param("kernel", attention.partitioned(nn.initializers.lecun_normal(), ("conv", None, "mlp")),
                        (self.kernel_size, 1, channels), self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param("bias", attention.partitioned(nn.initializers.zeros, ("mlp",)), (channels,),
                        self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = depthwise_conv1d(x, kernel, tuple(self.padding), self.impl)
    return y if bias is None else y + bias


class FeedForward(nn.Module):
  """Dense -> activation -> dropout -> Dense -> dropout."""
  mlp_dim: int
  activation: str = "swish"
  use_bias: bool = True
  activation_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    embed_dim = x.shape[-1]
    h = dense(self.mlp_dim, ("embed", "mlp"), self.use_bias, self.dtype, self.param_dtype, "intermediate")(x)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    h = get_activation(self.activation)(h)
    h = nn.Dropout(self.activation_dropout_rate)(h, deterministic=deterministic)
    h = dense(embed_dim, ("mlp", "embed"), self.use_bias, self.dtype, self.param_dtype, "output")(h)
    return nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class ConvolutionModule(nn.Module):
  """LN -> pointwise conv (2C) + GLU -> depthwise conv -> norm -> activation -> pointwise conv."""
  kernel_size: int = 5
  causal: bool = False
  norm: str = "group_norm"
  norm_groups: int = 32
  activation: str = "swish"
  use_bias: bool = False
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-5
  impl: str = "auto"
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
    if self.norm not in CONV_NORMS:
      raise ValueError(f"conv_norm={self.norm!r} is not one of {CONV_NORMS}")
    channels = x.shape[-1]
    valid = mask.astype(bool)[..., None]
    h = layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype, name="layer_norm")(x)
    h = jnp.where(valid, h, 0.0)
    h = dense(2 * channels, ("embed", "mlp"), self.use_bias, self.dtype, self.param_dtype, "pointwise_in")(h)
    h = nn.glu(h, axis=-1)
    # Zero again: with a bias the GLU output of a padded frame is not zero, and the depthwise conv
    # would carry it into the valid frames next to it.
    h = jnp.where(valid, h, 0.0)
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))
    if self.causal:
      padding = [(self.kernel_size - 1, 0)]
    else:
      padding = [((self.kernel_size - 1) // 2, self.kernel_size // 2)]
    h = DepthwiseConv1D(self.kernel_size, padding[0], self.use_bias, self.dtype, self.param_dtype,
                        self.impl, name="depthwise")(h)
    if self.norm == "group_norm":
      h = MaskedGroupNorm(self.norm_groups, self.layer_norm_epsilon, self.dtype, self.param_dtype,
                          name="depthwise_norm")(h, mask)
    else:
      h = layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype, "mlp", name="depthwise_norm")(h)
    h = get_activation(self.activation)(h)
    h = dense(channels, ("mlp", "embed"), self.use_bias, self.dtype, self.param_dtype, "pointwise_out")(h)
    return nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)


class ConformerBlockOptions(nn.Module):
  """The options of a Conformer block, shared by ConformerBlock and ConformerStack (which forwards
  them to each of its blocks); see the module docstring for the layout and the HF-parity options.

  Attributes:
    mlp_dim: hidden size of both macaron FFNs.
    num_heads / head_dim: attention heads (head_dim defaults to dim // num_heads).
    position_type / left_max_position / right_max_position / relative_key_impl / rotary_base:
      see attention.py.
    attention_use_bias: biases on q/k/v/out.
    conv_kernel_size / conv_causal / conv_norm / conv_norm_groups / conv_use_bias: conv module.
    conv_impl: the depthwise conv's kernel ("auto", "grouped", "shifts"; see depthwise_conv1d).
    activation: FFN and conv activation (swish).
    ffn_residual_factor: weight of each macaron FFN on the residual (0.5).
    ffn_use_bias: biases in the FFNs.
    dropout_rate: on the outputs of FFNs, attention and conv module (residual dropout).
    attention_dropout_rate: on attention probabilities.
    activation_dropout_rate: inside the FFNs, after the activation.
    layer_norm_epsilon: of every norm in the block.
  """
  mlp_dim: int = 4096
  num_heads: int = 8
  head_dim: int | None = None
  position_type: str = "relative_key"
  left_max_position: int = 64
  right_max_position: int = 64
  relative_key_impl: str = "gather"
  rotary_base: float = 10000.0
  attention_use_bias: bool = True
  conv_kernel_size: int = 5
  conv_causal: bool = False
  conv_norm: str = "group_norm"
  conv_norm_groups: int = 32
  conv_use_bias: bool = False
  conv_impl: str = "auto"
  activation: str = "swish"
  ffn_residual_factor: float = 0.5
  ffn_use_bias: bool = True
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  activation_dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-5
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32


class ConformerBlock(ConformerBlockOptions):
  """One Conformer block (options: ConformerBlockOptions)."""

  def _ffn(self, name: str) -> FeedForward:
    return FeedForward(self.mlp_dim, self.activation, self.ffn_use_bias, self.activation_dropout_rate,
                       self.dropout_rate, self.dtype, self.param_dtype, name=name)

  def _ln(self, name: str) -> nn.LayerNorm:
    return layer_norm(self.layer_norm_epsilon, self.dtype, self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    # The residual stream's gradient, stored once at the block's input and after each add (fence.py).
    x = fence.cotangent_fence(x)
    x = x + self.ffn_residual_factor * self._ffn("ffn1")(self._ln("ffn1_norm")(x), deterministic)
    x = fence.cotangent_fence(x)
    h = attention.MultiHeadSelfAttention(
        num_heads=self.num_heads, head_dim=self.head_dim, position_type=self.position_type,
        left_max_position=self.left_max_position, right_max_position=self.right_max_position,
        relative_key_impl=self.relative_key_impl, rotary_base=self.rotary_base, use_bias=self.attention_use_bias,
        dropout_rate=self.attention_dropout_rate, dtype=self.dtype, param_dtype=self.param_dtype,
        name="self_attention")(self._ln("self_attention_norm")(x), mask, deterministic)
    x = x + nn.Dropout(self.dropout_rate)(h, deterministic=deterministic)
    x = fence.cotangent_fence(x)
    x = x + ConvolutionModule(
        kernel_size=self.conv_kernel_size, causal=self.conv_causal, norm=self.conv_norm,
        norm_groups=self.conv_norm_groups, activation=self.activation, use_bias=self.conv_use_bias,
        dropout_rate=self.dropout_rate, layer_norm_epsilon=self.layer_norm_epsilon, impl=self.conv_impl,
        dtype=self.dtype, param_dtype=self.param_dtype, name="conv")(x, mask, deterministic)
    x = fence.cotangent_fence(x)
    x = x + self.ffn_residual_factor * self._ffn("ffn2")(self._ln("ffn2_norm")(x), deterministic)
    x = fence.cotangent_fence(x)
    x = self._ln("final_norm")(x)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))


class _ScannedConformerBlock(ConformerBlock):
  """nn.scan body: (carry, broadcast args) -> (carry, no per-layer output)."""

  def __call__(self, x: Array, mask: Array, deterministic: bool = True):
    return super().__call__(x, mask, deterministic), None


# Block attributes a stack forwards to each of its blocks.
_BLOCK_FIELDS = tuple(f for f in ConformerBlockOptions.__dataclass_fields__ if f not in ("parent", "name"))


@gin.configurable
class ConformerStack(ConformerBlockOptions):
  """`num_layers` Conformer blocks, scanned or unrolled, optionally rematerialised.

  Every ConformerBlockOptions attribute is an attribute here too (forwarded to each block), so that
  gin configures blocks through this class (`ConformerStack.mlp_dim = ...`); lifted block classes
  cannot be gin-configured directly.

  Attributes:
    num_layers: number of blocks (0 gives the identity).
    scan_layers: nn.scan over the blocks (parameters with a leading axis named "layers").
    remat_policy: a key of REMAT_POLICIES ("none" disables rematerialisation).
    scan_unroll: blocks per iteration of the scan; None: all of them on CPU, 1 elsewhere (the
      parameters stay stacked either way).
  """
  num_layers: int = 1
  scan_layers: bool = True
  remat_policy: str = "none"
  scan_unroll: int | None = None

  def _scan_unroll(self) -> int:
    if self.scan_unroll is not None:
      return max(1, min(self.scan_unroll, max(self.num_layers, 1)))
    # XLA's CPU runtime runs a while loop's body through a fresh executor per iteration, with
    # copies of the carried stacks around it (about 15 % of the tiny train step); unrolled, the
    # same stacked parameters give straight-line code. Accelerators keep the rolled loop (its
    # compile time does not grow with depth).
    return max(self.num_layers, 1) if jax.default_backend() == "cpu" else 1

  def block_kwargs(self) -> dict[str, Any]:
    return {f: getattr(self, f) for f in _BLOCK_FIELDS}

  def setup(self):
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f"ConformerStack.remat_policy={self.remat_policy!r}; choose one of "
                       f"{sorted(REMAT_POLICIES)}")
    if self.position_type not in attention.POSITION_TYPES:
      raise ValueError(f"ConformerStack.position_type={self.position_type!r}; choose one of "
                       f"{attention.POSITION_TYPES}")
    if self.conv_norm not in CONV_NORMS:
      raise ValueError(f"ConformerStack.conv_norm={self.conv_norm!r}; choose one of {CONV_NORMS}")
    block_cls = _ScannedConformerBlock if self.scan_layers else ConformerBlock
    if self.remat_policy != "none":
      # `deterministic` (argument 3, counting self) is a Python bool: static under remat. CSE
      # prevention is only needed outside scan.
      block_cls = nn.remat(block_cls, policy=REMAT_POLICIES[self.remat_policy],
                           prevent_cse=not self.scan_layers, static_argnums=(3,))
    if self.num_layers == 0:
      self.layers = None
    elif self.scan_layers:
      scanned = nn.scan(
          block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
          in_axes=(nn.broadcast, nn.broadcast), length=self.num_layers, unroll=self._scan_unroll(),
          metadata_params={nn.PARTITION_NAME: "layers"})
      self.layers = scanned(**self.block_kwargs(), name="layers")
    else:
      self.layers = [block_cls(**self.block_kwargs(), name=f"layers_{i}") for i in range(self.num_layers)]

  def __call__(self, x: Array, mask: Array, deterministic: bool = True) -> Array:
    if self.num_layers == 0:
      return x
    if self.scan_layers:
      x, _ = self.layers(x, mask, deterministic)
      return x
    for layer in self.layers:
      x = layer(x, mask, deterministic)
    return x


def stack_layer_params(unrolled: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
  """Params of an unrolled stack ({"layers_i": ...}) -> those of a scanned one ({"layers": ...}).

  Works on unboxed arrays (partitioning boxes are dropped; flax.core.meta.unbox first).
  """
  unrolled = meta.unbox(unrolled)
  per_layer = [unrolled[f"layers_{i}"] for i in range(num_layers)]
  return {"layers": jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_layer)}


def unstack_layer_params(scanned: Mapping[str, Any], num_layers: int) -> dict[str, Any]:
  """Params of a scanned stack ({"layers": ...}) -> those of an unrolled one ({"layers_i": ...}).

  Works on unboxed arrays (partitioning boxes are dropped; flax.core.meta.unbox first).
  """
  scanned = meta.unbox(scanned)
  return {f"layers_{i}": jax.tree_util.tree_map(lambda x, i=i: x[i], scanned["layers"])
          for i in range(num_layers)}
