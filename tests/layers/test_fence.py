"""The residual stream's gradient fence: the identity in value, forward and backward; on one CPU device
it stops XLA from recomputing the gradient's chain inside the ops that read it."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mslam_jax.layers import conformer
from mslam_jax.layers import fence


@pytest.fixture
def fences(monkeypatch):
  def set_fences(on: bool):
    monkeypatch.setattr(fence, "fences_apply", lambda: on)
  return set_fences


@pytest.fixture
def fresh_compiles():
  # The tests read compiled programs' metadata (op names), which the persistent cache's key leaves
  # out: a cached executable of the same program may carry another version's names.
  before = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  yield
  jax.config.update("jax_enable_compilation_cache", before)


DIM = 64


def _stack_and_inputs():
  stack = conformer.ConformerStack(num_layers=2, mlp_dim=4 * DIM, num_heads=4, scan_layers=False,
                                   conv_norm="layer_norm", left_max_position=16, right_max_position=4)
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64, DIM)), jnp.float32)
  mask = jnp.asarray(np.arange(64)[None, :] < np.array([64, 50, 33, 64])[:, None], jnp.int32)
  params = stack.init(jax.random.PRNGKey(0), x, mask)
  return stack, params, x, mask


def _grad_fn(stack, mask):
  return jax.jit(jax.grad(lambda p, x: jnp.sum(stack.apply(p, x, mask) ** 2), argnums=(0, 1)))


def test_the_fence_is_the_identity_forward_and_backward(fences):
  x = jnp.linspace(-2.0, 2.0, 24).reshape(4, 6)
  g = jnp.cos(x)
  # A gradient whose first element is NaN (the loop then runs no trip) and one with infinities too.
  odd = g.at[0, 0].set(jnp.nan).at[1, 2].set(jnp.inf)
  fences(True)
  for cotangent in (g, odd):
    value, vjp = jax.jit(lambda v: jax.vjp(fence.cotangent_fence, v))(x)
    np.testing.assert_array_equal(value, x)
    np.testing.assert_array_equal(jax.jit(vjp)(cotangent)[0], cotangent)
    np.testing.assert_array_equal(jax.jit(fence.materialize)(cotangent), cotangent)
  # Inside a function: the same gradient, up to the rounding of the ops XLA now fuses differently.
  fenced = jax.jit(jax.grad(lambda v: jnp.sum(jnp.tanh(fence.cotangent_fence(v * 3.0)) * g)))
  plain = jax.jit(jax.grad(lambda v: jnp.sum(jnp.tanh(v * 3.0) * g)))
  np.testing.assert_allclose(fenced(x), plain(x), rtol=1e-5, atol=1e-7)


def test_fences_apply_on_one_cpu_device_only():
  assert fence.fences_apply() == (jax.default_backend() == "cpu" and jax.device_count() == 1)


def test_a_conformer_stack_keeps_its_gradients_and_stores_the_residual_gradient_once(fences, fresh_compiles):
  stack, params, x, mask = _stack_and_inputs()
  programs, grads = {}, {}
  for on in (False, True):
    fences(on)
    grad_fn = _grad_fn(stack, mask)
    programs[on] = grad_fn.lower(params, x).compile().as_text()
    grads[on] = grad_fn(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(grads[False]), jax.tree_util.tree_leaves(grads[True])):
    # Equal up to float rounding: the two programs sum the weight gradients' rows in other orders.
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=3e-6)
  assert "while" in programs[True] and "while" not in programs[False]

  def norm_backward_ops(program):  # the layer norms' backward products, every copy XLA made of them
    return sum(1 for line in program.splitlines() if "transpose(jvp" in line and "_norm/mul" in line)

  def widest_transpose(program):  # the most inputs any op that transposes a [rows, DIM] gradient reads
    fusions = [line for line in program.splitlines()  # matmul's transposed activations aside
               if re.match(rf"\s+%\w*copy\w*fusion[.\d]* = f32\[{DIM},\d+\]", line)
               and "activation_transposed" not in line]
    return max(line.split("calls=")[0].count("%") - 1 for line in fusions)

  # Unfenced, XLA:CPU copies the norms' backward chain into each op that reads the gradient, and
  # the transposes for the weight gradients read a layer's worth of inputs.
  assert norm_backward_ops(programs[True]) < 0.7 * norm_backward_ops(programs[False])
  assert widest_transpose(programs[True]) <= 8 < widest_transpose(programs[False])
