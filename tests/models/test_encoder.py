"""MSLAMEncoder on the tiny size: padding invariance, stage layout, text path, bf16."""
import functools

from flax.core import meta
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mslam_jax import config
from mslam_jax.layers import pooling
from mslam_jax.models import encoder
from tests import layer_inputs


@pytest.fixture(scope="module")
def tiny():
  """The tiny encoder, its (numpy-filled) variables and a jitted encode_speech; gin stays parsed
  while the module's tests run (stacks read their bindings when the encoder is applied)."""
  gin.clear_config()
  config.parse_gin(["models/tiny.gin"])
  enc = encoder.MSLAMEncoder()
  audio, audio_mask = _audio([4000], 4000)
  tokens = jnp.ones((1, 6), jnp.int32)
  abstract = meta.unbox(jax.eval_shape(enc.init, jax.random.key(0), audio, audio_mask, tokens, tokens))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda s: jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype), abstract)
  encode = jax.jit(functools.partial(enc.apply, method=enc.encode_speech))
  yield enc, variables, encode
  gin.clear_config()


_audio = layer_inputs.padded_noise


def test_encode_speech_does_not_depend_on_batch_padding(tiny):
  enc, variables, encode = tiny
  clip, clip_mask = _audio([4000], 4000)
  frames, mask, pooled = encode(variables, clip, clip_mask)
  assert frames.shape[-1] == enc.embed_dim and pooled.shape == (1, enc.embed_dim)
  # The same clip next to a longer one, padded with 2,400 more samples (6 frames after subsampling).
  batch_audio, batch_mask = _audio([6400, 4000], 6400, seed=1)
  batch_audio = batch_audio.at[1, :4000].set(clip[0])
  b_frames, b_mask, b_pooled = encode(variables, batch_audio, batch_mask)
  n = int(mask.sum())
  assert n > 0 and int(b_mask[1].sum()) == n and b_frames.shape[1] > frames.shape[1]
  np.testing.assert_allclose(b_frames[1, :n], frames[0, :n], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(b_pooled[1], pooled[0], atol=1e-4, rtol=1e-4)


def test_speech_statistics_are_each_stages_frame_mean_and_std_padding_aside(tiny):
  enc, variables, encode = tiny
  stats = jax.jit(functools.partial(enc.apply, method=enc.speech_statistics))
  clip, clip_mask = _audio([4000], 4000)
  got = np.asarray(stats(variables, clip, clip_mask))
  d = enc.embed_dim
  assert got.shape == (1, 6 * d)
  frames, mask, _ = encode(variables, clip, clip_mask)
  top = np.asarray(frames[0, :int(mask.sum())])
  # The last stage is the shared stack: encode_speech's frames.
  np.testing.assert_allclose(got[0, 4 * d:5 * d], top.mean(0), atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got[0, 5 * d:], top.std(0), atol=1e-3, rtol=1e-3)
  batch_audio, batch_mask = _audio([6400, 4000], 6400, seed=1)
  batch_audio = batch_audio.at[1, :4000].set(clip[0])
  np.testing.assert_allclose(np.asarray(stats(variables, batch_audio, batch_mask))[1], got[0], atol=1e-3, rtol=1e-3)


def test_bf16_encode_speech_runs_and_is_close_to_fp32(tiny):
  enc, variables, encode = tiny
  clip, clip_mask = _audio([4000], 4000)
  ref, mask, _ = encode(variables, clip, clip_mask)
  enc16 = enc.clone(dtype=jnp.bfloat16)
  got, _, pooled = jax.jit(functools.partial(enc16.apply, method=enc16.encode_speech))(variables, clip, clip_mask)
  assert got.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(pooled, np.float32)))
  err = np.abs(np.asarray(got, np.float32) - np.asarray(ref))[np.asarray(mask, bool)[0][None]]
  assert err.mean() < 0.05, err.mean()


def test_stage_layout_and_contrastive_split(tiny):
  enc, _, _ = tiny
  audio, audio_mask = _audio([4000], 4000)
  tokens = jnp.ones((1, 6), jnp.int32)
  split = enc.clone(contrastive_layer=1)
  params = meta.unbox(jax.eval_shape(split.init, jax.random.key(0), audio, audio_mask, tokens, tokens))["params"]
  layers = lambda stack: jax.tree_util.tree_leaves(params[stack])[0].shape[0]
  assert (layers("speech_lower"), layers("speech_upper"), layers("shared")) == (1, 1, 2)
  # Default: the contrastive output is the output of all speech-only layers.
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 5, enc.embed_dim))
  m = jnp.ones((1, 5), jnp.int32)
  variables = jax.eval_shape(enc.init, jax.random.key(0), audio, audio_mask, tokens, tokens)
  assert "speech_upper" not in variables["params"]
  c_out, s_out = jax.eval_shape(functools.partial(enc.apply, method=enc.speech_layers),
                                meta.unbox(variables), x, m)
  assert c_out.shape == s_out.shape == x.shape


def test_encode_text_goes_through_shared_stack_and_ignores_padding(tiny):
  enc, variables, _ = tiny
  encode_text = jax.jit(functools.partial(enc.apply, method=enc.encode_text))
  tokens = jnp.array([[5, 9, 7, 12, 6]], jnp.int32)
  frames, mask, pooled = encode_text(variables, tokens, jnp.ones_like(tokens))
  padded = jnp.array([[5, 9, 7, 12, 6, 0, 0, 0], [8, 8, 8, 8, 8, 8, 8, 8]], jnp.int32)
  p_mask = jnp.array([[1] * 5 + [0] * 3, [1] * 8], jnp.int32)
  p_frames, _, p_pooled = encode_text(variables, padded, p_mask)
  np.testing.assert_allclose(p_frames[0, :5], frames[0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(p_pooled[0], pooled[0], atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(pooled, pooling.masked_mean(frames, mask), atol=1e-6)
  # Text runs the shared stack: changing its parameters changes the text encoding.
  shifted = dict(variables["params"], shared=jax.tree_util.tree_map(lambda p: p + 0.1, variables["params"]["shared"]))
  other, _, _ = encode_text({"params": shifted}, tokens, jnp.ones_like(tokens))
  assert not np.allclose(other, frames, atol=1e-3)
