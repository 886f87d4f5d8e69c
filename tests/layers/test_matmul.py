"""The weight matmuls' operand precision: exact float32 by default, bf16 operands with float32
accumulation (forward and backward) on request, "auto" by the host."""
import re

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mslam_jax import cpu_host
from mslam_jax.layers import matmul


@pytest.fixture
def precision():
  def set_precision(value):
    gin.bind_parameter("matmul_precision.precision", value)
  yield set_precision
  gin.clear_config()
  matmul._auto_precision.cache_clear()  # pylint: disable=protected-access


def _round(x):
  return x.astype(jnp.bfloat16).astype(jnp.float32)


def _operands():
  a = jax.random.normal(jax.random.key(0), (3, 5, 7))
  b = jax.random.normal(jax.random.key(1), (7, 2, 4))
  g = jax.random.normal(jax.random.key(2), (3, 2, 5, 4))
  return a, b, g


SPEC = "bld,dhk->bhlk"


def _value_and_grads(a, b, g):
  out, vjp = jax.vjp(lambda x, y: matmul.einsum(SPEC, x, y), a, b)
  return (out, *vjp(g))


def test_float32_is_jnp_einsum_to_the_bit(precision):
  a, b, g = _operands()
  out, da, db = _value_and_grads(a, b, g)
  ref, ref_vjp = jax.vjp(lambda x, y: jnp.einsum(SPEC, x, y), a, b)
  assert out.dtype == jnp.float32
  np.testing.assert_array_equal(out, ref)
  for got, want in zip((da, db), ref_vjp(g)):
    np.testing.assert_array_equal(got, want)


def test_bfloat16_rounds_operands_and_cotangents_and_accumulates_in_float32(precision):
  precision("bfloat16")
  a, b, g = _operands()
  out, da, db = _value_and_grads(a, b, g)
  hi = jax.lax.Precision.HIGHEST
  assert out.dtype == da.dtype == db.dtype == jnp.float32
  # Exactly the products of the rounded values, each accumulated in float32 ...
  np.testing.assert_allclose(out, jnp.einsum(SPEC, _round(a), _round(b), precision=hi), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(da, jnp.einsum("bhlk,dhk->bld", _round(g), _round(b), precision=hi),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(db, jnp.einsum("bld,bhlk->dhk", _round(a), _round(g), precision=hi),
                             rtol=1e-5, atol=1e-5)
  # ... so they differ from float32's by bf16's rounding, not more.
  exact, exact_vjp = jax.vjp(lambda x, y: jnp.einsum(SPEC, x, y, precision=hi), a, b)
  for got, want in zip((out, da, db), (exact, *exact_vjp(g))):
    assert 0 < float(jnp.max(jnp.abs(got - want)) / jnp.max(jnp.abs(want))) < 2e-2


def test_bfloat16_keeps_the_inputs_dtypes_and_the_preferred_output(precision):
  precision("bfloat16")
  a, b, _ = _operands()
  a16 = a.astype(jnp.bfloat16)
  assert matmul.einsum(SPEC, a16, b).dtype == jnp.float32  # einsum's own promotion
  assert matmul.einsum(SPEC, a16, b.astype(jnp.bfloat16)).dtype == jnp.bfloat16
  assert matmul.einsum(SPEC, a16, b.astype(jnp.bfloat16), preferred_element_type=jnp.float32).dtype == jnp.float32
  grads = jax.grad(lambda x, y: matmul.einsum(SPEC, x, y).astype(jnp.float32).sum(), argnums=(0, 1))(a16, b)
  assert grads[0].dtype == jnp.bfloat16 and grads[1].dtype == jnp.float32


def test_ellipsis_products_and_their_gradients(precision):
  precision("bfloat16")
  x = jax.random.normal(jax.random.key(3), (2, 3, 6))
  table = jax.random.normal(jax.random.key(4), (9, 6))
  got = jax.grad(lambda t: jnp.sum(matmul.einsum("...d,vd->...v", x, t) ** 2))(table)
  want = jax.grad(lambda t: jnp.sum(jnp.einsum("...d,vd->...v", _round(x), _round(t)) ** 2))(table)
  np.testing.assert_allclose(got, want, rtol=3e-2, atol=3e-2)


def test_an_axis_summed_within_one_operand_is_refused(precision):
  precision("bfloat16")
  with pytest.raises(ValueError, match="summed within it alone"):
    matmul.einsum("ab,bc->c", jnp.ones((2, 3)), jnp.ones((3, 4)))


@pytest.mark.parametrize("dims, lhs_shape, rhs_shape", [
    ((((2,), (0,)), ((), ())), (2, 3, 4), (4, 5)),              # nn.Dense
    ((((1,), (2,)), ((0,), (0,))), (2, 3, 4), (2, 5, 3)),       # batched, rhs contracted last
])
def test_dot_general_is_lax_dot_general_of_the_rounded_operands(precision, dims, lhs_shape, rhs_shape):
  lhs = jax.random.normal(jax.random.key(5), lhs_shape)
  rhs = jax.random.normal(jax.random.key(6), rhs_shape)
  np.testing.assert_array_equal(matmul.dot_general(lhs, rhs, dims), jax.lax.dot_general(lhs, rhs, dims))
  precision("bfloat16")
  want = jax.lax.dot_general(_round(lhs), _round(rhs), dims, precision=jax.lax.Precision.HIGHEST)
  np.testing.assert_allclose(matmul.dot_general(lhs, rhs, dims), want, rtol=1e-5, atol=1e-5)


def test_a_bad_precision_names_the_binding(precision):
  precision("fp8")
  with pytest.raises(ValueError, match=r"matmul_precision.precision='fp8'"):
    matmul.matmul_precision()


@pytest.mark.parametrize("backend, units, chosen", [("cpu", True, "bfloat16"), ("cpu", False, "float32"),
                                                     ("gpu", True, "float32"), ("tpu", False, "float32")])
def test_auto_follows_the_hosts_bf16_matrix_units(precision, monkeypatch, backend, units, chosen):
  # Accelerators keep float32 operands whatever the host's CPU has: they apply their own precision.
  monkeypatch.setattr(cpu_host, "bf16_matmul_units", lambda: units)
  monkeypatch.setattr(jax, "default_backend", lambda: backend)
  matmul._auto_precision.cache_clear()  # pylint: disable=protected-access
  precision("auto")
  assert matmul.matmul_precision() == "auto"  # the configured value; resolving it touches the backend
  assert matmul.operand_precision() == chosen


def test_bf16_matmul_units_read_the_cpu_flags(tmp_path):
  amx = tmp_path / "amx"
  amx.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f amx_bf16 amx_tile\n")
  avx512 = tmp_path / "avx512"
  avx512.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
  plain = tmp_path / "plain"
  plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
  assert cpu_host.bf16_matmul_units(str(amx))
  assert cpu_host.bf16_matmul_units(str(avx512))
  assert not cpu_host.bf16_matmul_units(str(plain))
  assert not cpu_host.bf16_matmul_units(str(tmp_path / "missing"))


@pytest.mark.parametrize("spec,a_shape,b_shape,g_first", [
    ("btf,fo->bto", (2, 9, 12), (12, 3), True),   # the activation wider than the output: g goes first
    ("btf,of->bto", (2, 9, 12), (3, 12), True),
    ("btd,dhk->bthk", (2, 9, 12), (12, 2, 2), True),
    ("btd,dv->btv", (2, 9, 3), (3, 12), False),   # the output wider: a goes first, as before
])
def test_bfloat16_weight_cotangent_is_the_rounded_product_whichever_operand_goes_first(
    precision, spec, a_shape, b_shape, g_first):
  precision("bfloat16")
  a = jax.random.normal(jax.random.key(0), a_shape)
  b = jax.random.normal(jax.random.key(1), b_shape)
  out, vjp = jax.vjp(lambda x, y: matmul.einsum(spec, x, y), a, b)
  g = jax.random.normal(jax.random.key(2), out.shape)
  _, db = jax.jit(vjp)(g)
  sa, sb, so = matmul._operands(spec)  # pylint: disable=protected-access
  want = jnp.einsum(f"{sa},{so}->{sb}", _round(a), _round(g), precision=jax.lax.Precision.HIGHEST)
  assert db.shape == b.shape and db.dtype == jnp.float32
  np.testing.assert_allclose(db, want, rtol=1e-5, atol=1e-5)
  # The first operand is a transposed copy behind a barrier; the swapped product is behind one too.
  assert str(jax.make_jaxpr(vjp)(g)).count("optimization_barrier") == (2 if g_first else 1)


def _eigen_dots(fn, *args) -> int:
  """Dots of fn's compiled program that XLA:CPU leaves to Eigen: those outside a YNNPACK fusion."""
  text = jax.jit(fn).lower(*args).compile().as_text()
  return len(re.findall(r"= f32\[[^\]]*\]\{[^}]*\} dot\(", text[text.index("\nENTRY"):]))


@pytest.mark.parametrize("spec,a_shape,b_shape,eigen_before", [
    ("btd,df->btf", (4, 50, 32), (32, 64), True),       # the output wider: the activation goes first
    ("btf,fd->btd", (4, 50, 32), (32, 16), True),       # the activation wider: the cotangent goes first
    ("bld,dhk->bhlk", (4, 50, 32), (32, 2, 16), False),  # attention's projections
])
def test_float32_backward_products_all_run_on_ynnpack(precision, spec, a_shape, b_shape, eigen_before):
  # Left to XLA, the weight's cotangent contracts the activation over its rows in Eigen's dot.
  precision("float32")
  a = jax.random.normal(jax.random.key(0), a_shape)
  b = jax.random.normal(jax.random.key(1), b_shape)
  out, vjp = jax.vjp(lambda x, y: matmul.einsum(spec, x, y), a, b)
  g = jax.random.normal(jax.random.key(2), out.shape)
  _, plain_vjp = jax.vjp(lambda x, y: jnp.einsum(spec, x, y), a, b)
  assert (_eigen_dots(plain_vjp, g) >= 1) == eigen_before
  assert _eigen_dots(vjp, g) == 0
  np.testing.assert_array_equal(out, jnp.einsum(spec, a, b))
  for got, want in zip(jax.jit(vjp)(g), jax.jit(plain_vjp)(g)):
    assert got.shape == want.shape and got.dtype == want.dtype
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
