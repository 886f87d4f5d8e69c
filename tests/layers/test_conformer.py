"""Conformer stack: scan == unrolled, padding invariance, causal conv, bf16 near fp32."""
from flax.core import meta
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mslam_jax.layers import conformer
from tests import layer_inputs

DIM = 32
TINY = dict(mlp_dim=48, num_heads=4, conv_kernel_size=5, conv_norm_groups=4, left_max_position=4,
            right_max_position=4)


random_variables = layer_inputs.random_variables


def _inputs(batch=2, length=12):
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, length, DIM))
  mask = (jnp.arange(length)[None] < jnp.array([[length], [7]])[:batch]).astype(jnp.int32)
  return x, mask


def test_scan_and_unrolled_stacks_agree_with_copied_params():
  x, mask = _inputs()
  unrolled = conformer.ConformerStack(num_layers=2, scan_layers=False, **TINY)
  scanned = conformer.ConformerStack(num_layers=2, scan_layers=True, remat_policy="full", **TINY)
  params = random_variables(unrolled, x, mask)["params"]
  expected = jax.jit(unrolled.apply)({"params": params}, x, mask)
  scanned_params = conformer.stack_layer_params(params, 2)
  # The stacked layout is exactly the one the scanned stack's init produces.
  abstract = meta.unbox(jax.eval_shape(scanned.init, jax.random.key(1), x, mask)["params"])
  assert jax.tree_util.tree_map(np.shape, abstract) == jax.tree_util.tree_map(np.shape, scanned_params)
  got = jax.jit(scanned.apply)({"params": scanned_params}, x, mask)
  np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
  back = conformer.unstack_layer_params(scanned_params, 2)
  jax.tree_util.tree_map(np.testing.assert_array_equal, back, params)


def test_block_output_does_not_depend_on_batch_padding():
  block = conformer.ConformerBlock(**TINY)
  x, _ = _inputs(batch=1, length=7)
  mask = jnp.ones((1, 7), jnp.int32)
  variables = random_variables(block, x, mask)
  alone = jax.jit(block.apply)(variables, x, mask)
  padded_x = jnp.concatenate([x, 50.0 * jax.random.normal(jax.random.PRNGKey(3), (1, 6, DIM))], axis=1)
  padded = jax.jit(block.apply)(variables, padded_x, jnp.pad(mask, ((0, 0), (0, 6))))
  np.testing.assert_allclose(padded[:, :7], alone, atol=1e-5, rtol=1e-5)


def test_causal_conv_ignores_future_frames():
  # HF Wav2Vec2Bert's conv module is causal with a layer norm; the output at t must not see t+1.
  module = conformer.ConvolutionModule(kernel_size=5, causal=True, norm="layer_norm")
  x, _ = _inputs(batch=1, length=10)
  mask = jnp.ones((1, 10), jnp.int32)
  variables = random_variables(module, x, mask, True)
  apply = jax.jit(module.apply, static_argnums=3)
  a = apply(variables, x, mask, True)
  b = apply(variables, x.at[:, 6:].add(10.0), mask, True)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
  assert not np.allclose(a[:, 6:], b[:, 6:])


def test_bf16_compute_is_close_to_fp32():
  x, mask = _inputs()
  fp32 = conformer.ConformerStack(num_layers=2, **TINY)
  bf16 = conformer.ConformerStack(num_layers=2, dtype=jnp.bfloat16, **TINY)
  variables = random_variables(fp32, x, mask)
  ref = jax.jit(fp32.apply)(variables, x, mask)
  got = jax.jit(bf16.apply)(variables, x.astype(jnp.bfloat16), mask)
  assert got.dtype == jnp.bfloat16
  assert jax.tree_util.tree_leaves(variables)[0].dtype == jnp.float32
  err = np.abs(np.asarray(got, np.float32) - np.asarray(ref))[np.asarray(mask, bool)]
  # Outputs leave a layer norm (O(1) values); bf16 keeps about 3 significant digits.
  assert err.mean() < 0.03 and err.max() < 0.3, (err.mean(), err.max())


# ---- HF transformers Wav2Vec2BertEncoderLayer options, against a direct numpy transcription ----

HF_OPTIONS = dict(mlp_dim=48, num_heads=4, position_type="relative_key", left_max_position=3,
                  right_max_position=1, conv_kernel_size=5, conv_causal=True, conv_norm="layer_norm",
                  conv_use_bias=False, attention_use_bias=True, ffn_use_bias=True, activation="swish",
                  layer_norm_epsilon=1e-5)


def _np_layer_norm(x, p, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _np_swish(x):
  return x / (1 + np.exp(-x))


def _np_ffn(x, p):
  h = _np_swish(x @ p["intermediate"]["kernel"] + p["intermediate"]["bias"])
  return h @ p["output"]["kernel"] + p["output"]["bias"]


def _np_attention(x, mask, p, left, right):
  proj = lambda n: np.einsum("bld,dhk->bhlk", x, p[f"{n}_kernel"]) + p[f"{n}_bias"][None, :, None]
  q, k, v = proj("query"), proj("key"), proj("value")
  length, head_dim = x.shape[1], q.shape[-1]
  distance = np.clip(np.arange(length)[None, :] - np.arange(length)[:, None], -left, right)
  table = p["relative_key_embedding"][distance + left]
  scores = (q @ k.transpose(0, 1, 3, 2) + np.einsum("bhld,lrd->bhlr", q, table)) / np.sqrt(head_dim)
  scores = scores + np.where(mask[:, None, None, :] != 0, 0.0, np.finfo(np.float32).min)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  return np.einsum("bhqk,bhkd,hdo->bqo", probs, v, p["out_kernel"]) + p["out_bias"]


def _np_conv_module(x, mask, p, kernel_size):
  h = _np_layer_norm(x, p["layer_norm"]) * (mask[..., None] != 0)
  h = h @ p["pointwise_in"]["kernel"]
  half = h.shape[-1] // 2
  h = h[..., :half] / (1 + np.exp(-h[..., half:]))  # torch GLU: first half * sigmoid(second)
  h = np.pad(h, ((0, 0), (kernel_size - 1, 0), (0, 0)))  # causal: all padding on the left
  w = p["depthwise"]["kernel"][:, 0, :]  # [K, C]
  h = sum(h[:, i:i + x.shape[1]] * w[i] for i in range(kernel_size))
  h = _np_swish(_np_layer_norm(h, p["depthwise_norm"]))
  return h @ p["pointwise_out"]["kernel"]


def test_hf_wav2vec2bert_options_match_a_direct_transcription_of_the_hf_layer():
  block = conformer.ConformerBlock(**HF_OPTIONS)
  x, mask = _inputs()
  params = random_variables(block, x, mask)["params"]
  got = jax.jit(block.apply)({"params": params}, x, mask)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  xx, mm = np.asarray(x, np.float64), np.asarray(mask)
  h = xx + 0.5 * _np_ffn(_np_layer_norm(xx, p["ffn1_norm"]), p["ffn1"])
  h = h + _np_attention(_np_layer_norm(h, p["self_attention_norm"]), mm, p["self_attention"], 3, 1)
  h = h + _np_conv_module(h, mm, p["conv"], 5)
  h = _np_layer_norm(h + 0.5 * _np_ffn(_np_layer_norm(h, p["ffn2_norm"]), p["ffn2"]), p["final_norm"])
  np.testing.assert_allclose(np.asarray(got), h, atol=1e-4, rtol=1e-4)


def _depthwise_inputs(channels=6, kernel_size=5):
  x, mask = _inputs()
  x = jax.random.normal(jax.random.PRNGKey(3), x.shape[:2] + (channels,))
  x = jnp.where(mask[..., None] != 0, x, 0.0)  # the conv module zeroes padded frames first
  kernel = jax.random.normal(jax.random.PRNGKey(4), (kernel_size, 1, channels))
  return x, mask, kernel


def test_shifted_depthwise_path_equals_grouped_conv_causal_and_centred_with_padding():
  x, mask, kernel = _depthwise_inputs()
  valid = mask[..., None] != 0
  for padding in ((4, 0), (2, 2)):  # causal, centred
    def run(impl, x, kernel, padding=padding):
      return conformer.depthwise_conv1d(x, kernel, padding, impl)
    grouped, shifts = (jax.jit(lambda x, k, impl=impl: run(impl, x, k))(x, kernel) for impl in ("grouped", "shifts"))
    np.testing.assert_allclose(jnp.where(valid, shifts, 0), jnp.where(valid, grouped, 0), atol=1e-5, rtol=1e-5)
    # Gradients too (the backward of the shifted sum is what the train step runs on CPU).
    loss = lambda impl: (lambda x, k: jnp.sum(jnp.where(valid, jnp.sin(run(impl, x, k)), 0.0)))
    g_grouped = jax.jit(jax.grad(loss("grouped"), argnums=(0, 1)))(x, kernel)
    g_shifts = jax.jit(jax.grad(loss("shifts"), argnums=(0, 1)))(x, kernel)
    for a, b in zip(g_shifts, g_grouped):
      np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


def test_stack_conv_impl_reaches_every_block_with_the_same_result():
  x, mask = _inputs()
  stacks = {impl: conformer.ConformerStack(num_layers=2, scan_layers=False, conv_impl=impl, **TINY)
            for impl in ("grouped", "shifts")}
  params = random_variables(stacks["grouped"], x, mask)["params"]
  outs = {impl: stack.apply({"params": params}, x, mask) for impl, stack in stacks.items()}
  np.testing.assert_allclose(outs["shifts"], outs["grouped"], atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match="winograd"):
    conformer.ConformerStack(num_layers=1, scan_layers=False, conv_impl="winograd", **TINY).init(
        jax.random.key(0), x, mask)


def test_depthwise_module_keeps_nn_conv_parameters_and_matches_it():
  x, mask, _ = _depthwise_inputs()
  channels = x.shape[-1]
  for padding, use_bias in (((4, 0), False), ((2, 2), True)):
    reference = nn.Conv(channels, kernel_size=(5,), padding=[padding], feature_group_count=channels,
                        use_bias=use_bias)
    ours = conformer.DepthwiseConv1D(5, padding, use_bias, impl="shifts")
    ref_params = reference.init(jax.random.PRNGKey(7), x)["params"]
    our_params = meta.unbox(ours.init(jax.random.PRNGKey(7), x)["params"])
    # Same names, shapes and initial values: checkpoints and the HF mapping see no change.
    jax.tree_util.tree_map(np.testing.assert_array_equal, our_params, ref_params)
    if use_bias:
      ref_params = dict(ref_params, bias=jnp.linspace(-1, 1, channels))
    expected = reference.apply({"params": ref_params}, x)
    got = ours.apply({"params": ref_params}, x)
    valid = mask[..., None] != 0
    np.testing.assert_allclose(jnp.where(valid, got, 0), jnp.where(valid, expected, 0), atol=1e-5, rtol=1e-5)
