"""The encoder's products with a weight, at one chosen operand precision.

`einsum(spec, a, b)` and `dot_general` (flax's `nn.Dense(dot_general=...)`) are jnp.einsum and
lax.dot_general when `matmul_precision` is "float32", the default: the HF parity tests hold to it.
On a CPU their float32 backward takes the weight's cotangent from `_rows_contracted`: the same
product, laid out so that XLA:CPU runs it on YNNPACK rather than in Eigen's slower dot. The layers
route their products with a weight through them (dense layers, attention projections, the
relative-key table, output heads); attention's products of two activations stay float32: on
XLA:CPU their batched backward products, in bf16, become transposes and upcasts that cost more than
they save.

"bfloat16" rounds both operands to bfloat16 and accumulates in float32, in the forward pass and in
both products of the backward pass (whose cotangent is rounded too). That is what a TPU does for a
float32 matmul at JAX's default precision. XLA:CPU ignores precision settings, and its bf16-in,
bf16-out dots take a slow path, but a bf16-in, f32-out dot runs on AMX-BF16 tiles 3-5 times faster
than float32, and about twice as fast with AVX512-BF16 alone (benchmarks/README.md, thirty-fifth and
thirty-ninth passes). Outputs and gradients keep the
inputs' dtypes, so parameters, optimizer state and every non-matmul op stay as they were.
"""
import functools
import logging
import string
from typing import Any

import gin
import jax
import jax.numpy as jnp

from mslam_jax import cpu_host

Array = jax.Array

PRECISIONS = ("float32", "bfloat16", "auto")


@gin.configurable
def matmul_precision(precision: str = "float32") -> str:
  """The configured operand precision of the encoder's weight matmuls (gin: matmul_precision.precision
  = ...), checked; it touches no JAX backend, so a command may check it before jax.distributed starts.

  "auto" is "bfloat16" on a CPU backend with a bfloat16 matrix unit (cpu_host.bf16_matmul_units)
  and "float32" elsewhere: accelerators apply their own default precision to float32 dots.
  """
  if precision not in PRECISIONS:
    raise ValueError(f"matmul_precision.precision={precision!r}; choose one of {PRECISIONS}")
  return precision


def operand_precision() -> str:
  """`matmul_precision()` with "auto" resolved on this process' backend: "float32" or "bfloat16"."""
  precision = matmul_precision()
  return _auto_precision() if precision == "auto" else precision


@functools.lru_cache(maxsize=None)
def _auto_precision() -> str:
  chosen = "bfloat16" if jax.default_backend() == "cpu" and cpu_host.bf16_matmul_units() else "float32"
  logging.info("matmul_precision auto: %s matmul operands on this %s host", chosen, jax.default_backend())
  return chosen


def _operands(spec: str) -> tuple[str, str, str]:
  inputs, out = spec.replace(" ", "").split("->")
  a, b = inputs.split(",")
  return a, b, out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _rounded_einsum(spec: str, dtype: Any, a: Array, b: Array) -> Array:
  """einsum(spec, a, b) of the operands rounded to `dtype`, accumulated in float32, with the weight's
  cotangent from `_rows_contracted` (float32: no rounding, the same product as jnp.einsum)."""
  return _rounded_einsum_fwd(spec, dtype, a, b)[0]


def _rounded_einsum_fwd(spec, dtype, a, b):
  a_r, b_r = a.astype(dtype), b.astype(dtype)
  out = jnp.einsum(spec, a_r, b_r, preferred_element_type=jnp.float32)
  # Zero-size stand-ins carry the inputs' dtypes to the backward pass (residuals must be arrays).
  return out, (a_r, b_r, jnp.zeros((0,), a.dtype), jnp.zeros((0,), b.dtype))


def _rounded_einsum_bwd(spec, dtype, residuals, g):
  a_r, b_r, a_dtype, b_dtype = residuals
  sa, sb, so = _operands(spec)
  g_r = g.astype(dtype)
  # Each operand's cotangent is the product of the output's with the other operand.
  da = jnp.einsum(f"{so},{sb}->{sa}", g_r, b_r, preferred_element_type=jnp.float32)
  db = _rows_contracted(sa, so, sb, a_r, g_r)
  return da.astype(a_dtype.dtype), db.astype(b_dtype.dtype)


def _rows_contracted(sa: str, so: str, sb: str, a: Array, g: Array) -> Array:
  """A weight's cotangent, einsum(sa, so -> sb) accumulated in float32: a contraction over the rows
  (batch and time) that `a` and `g` share.

  XLA:CPU's YNNPACK dot contracts its first operand over its minor axes only. Left to itself, XLA
  contracts an activation over its rows in Eigen's float32 dot (1.5 times as slow as YNNPACK's on
  the small step's [3184, 256] x [3184, 1024] weight gradient), after a transposed copy of the other
  operand, and in bfloat16, which Eigen's dot lacks, copies whichever operand is first. Here the
  smaller operand goes first, transposed into a copy behind an optimization barrier (without it XLA
  folds the transpose back into the dot); where that is g, the product comes out transposed, and the
  weight-sized result is transposed back (benchmarks/README.md, thirty-eighth and forty-third passes).
  """
  if jax.default_backend() != "cpu" or not _plain(f"{sa},{so}->{sb}"):
    return jnp.einsum(f"{sa},{so}->{sb}", a, g, preferred_element_type=jnp.float32)
  summed = "".join(c for c in sa if c in so)
  a_free, g_free = "".join(c for c in sa if c not in summed), "".join(c for c in so if c not in summed)
  if a.size <= g.size:
    with jax.named_scope("activation_transposed"):
      first = jax.lax.optimization_barrier(jnp.einsum(f"{sa}->{a_free}{summed}", a))
    return jnp.einsum(f"{a_free}{summed},{so}->{sb}", first, g, preferred_element_type=jnp.float32)
  with jax.named_scope("cotangent_transposed"):
    first = jax.lax.optimization_barrier(jnp.einsum(f"{so}->{g_free}{summed}", g))
  swapped = jnp.einsum(f"{g_free}{summed},{sa}->{g_free}{a_free}", first, a, preferred_element_type=jnp.float32)
  return jnp.einsum(f"{g_free}{a_free}->{sb}", jax.lax.optimization_barrier(swapped))


def _plain(spec: str) -> bool:
  """An einsum of two operands without ellipses, repeated letters, axes all three share (batch axes)
  or axes one operand sums alone: what _rows_contracted lays out."""
  sa, sb, so = _operands(spec)
  return ("." not in spec and len(set(sa)) == len(sa) and len(set(sb)) == len(sb) and len(set(so)) == len(so)
          and not set(sa) & set(sb) & set(so) and set(sa) <= set(sb) | set(so) and set(sb) <= set(sa) | set(so))


_rounded_einsum.defvjp(_rounded_einsum_fwd, _rounded_einsum_bwd)


def _check_transposable(spec: str) -> None:
  sa, sb, so = _operands(spec)
  for name, operand, other in (("first", sa, sb), ("second", sb, sa)):
    alone = set(operand.replace("...", "")) - set(so) - set(other)
    if alone:
      raise ValueError(f"einsum {spec!r}: the {name} operand's axes {sorted(alone)} are summed within it "
                       "alone; sum them before the product")


def einsum(spec: str, a: Array, b: Array, preferred_element_type: Any = None) -> Array:
  """jnp.einsum of two operands at `operand_precision()`; the result has einsum's dtype (or the
  preferred one)."""
  if operand_precision() == "float32":
    # On a CPU, float32 products with a weight take _rows_contracted's weight cotangent too.
    if (jax.default_backend() == "cpu" and a.dtype == b.dtype == jnp.float32
        and preferred_element_type in (None, jnp.float32) and _plain(spec)):
      return _rounded_einsum(spec, jnp.float32, a, b)
    return jnp.einsum(spec, a, b, preferred_element_type=preferred_element_type)
  _check_transposable(spec)
  out_dtype = preferred_element_type or jnp.result_type(a, b)
  return _rounded_einsum(spec, jnp.bfloat16, a, b).astype(out_dtype)


def dot_general(lhs: Array, rhs: Array, dimension_numbers, precision=None,
                preferred_element_type: Any = None) -> Array:
  """lax.dot_general's signature (flax's `dot_general` hook) at `operand_precision()`."""
  if operand_precision() == "float32" and jax.default_backend() != "cpu":
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
  letters = iter(string.ascii_letters)
  lhs_axes = [next(letters) for _ in range(lhs.ndim)]
  rhs_axes = [next(letters) for _ in range(rhs.ndim)]
  for l, r in zip(list(lhs_contract) + list(lhs_batch), list(rhs_contract) + list(rhs_batch)):
    rhs_axes[r] = lhs_axes[l]
  # dot_general's output order: batch axes, then the lhs' free axes, then the rhs'.
  out = ([lhs_axes[i] for i in lhs_batch]
         + [a for i, a in enumerate(lhs_axes) if i not in lhs_contract and i not in lhs_batch]
         + [a for i, a in enumerate(rhs_axes) if i not in rhs_contract and i not in rhs_batch])
  spec = f"{''.join(lhs_axes)},{''.join(rhs_axes)}->{''.join(out)}"
  return einsum(spec, lhs, rhs, preferred_element_type)
