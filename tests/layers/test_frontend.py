"""Speech frontend: subsampled lengths and masks, stacked frames, batch-padding invariance."""
import jax
import numpy as np

from mslam_jax.layers import frontend
from mslam_jax.layers import logmel
from tests import layer_inputs


random_variables = layer_inputs.random_variables


_batch = layer_inputs.padded_noise


def test_conv2d_subsamples_4x_with_consistent_masks_and_ignores_batch_padding():
  module = frontend.SpeechFrontend(mode="conv2d", conv_channels=4)
  lengths = [8000, 5000, 1234]
  audio, mask = _batch(lengths, 8000)
  variables = random_variables(module, audio, mask)
  apply = jax.jit(module.apply)
  feats, feats_mask = apply(variables, audio, mask)
  frames = logmel.num_frames(8000)
  assert feats.shape == (3, frontend.conv_output_length(frames), 4 * 20) == (3, (frames + 3) // 4, 80)
  assert module.output_dim == feats.shape[-1]
  valid = [frontend.conv_output_length(int(logmel.num_frames(n))) for n in lengths]
  np.testing.assert_array_equal(np.asarray(feats_mask).sum(1), valid)
  assert np.all(np.asarray(feats)[~np.asarray(feats_mask, bool)] == 0)
  # The second clip alone, in a batch padded to its own length: the same features.
  alone, alone_mask = apply(variables, audio[1:2, :5000], mask[1:2, :5000])
  assert int(alone_mask.sum()) == valid[1]
  np.testing.assert_allclose(alone[0, :valid[1]], feats[1, :valid[1]], atol=1e-4, rtol=1e-4)


def test_stacked_mode_gives_160_dim_normalized_frame_pairs():
  module = frontend.SpeechFrontend(mode="stacked")
  audio, mask = _batch([6400, 3300], 6400)
  feats, feats_mask = jax.jit(module.apply)({}, audio, mask)
  frames = int(logmel.num_frames(6400))
  assert feats.shape == (2, -(-frames // 2), 160) and module.output_dim == 160
  short = int(logmel.num_frames(3300))
  np.testing.assert_array_equal(np.asarray(feats_mask).sum(1), [frames // 2, short // 2])
  # Frame pairs of per-utterance-normalized log-mels, in order.
  mel, mel_mask = logmel.log_mel_fbank(audio, mask)
  normed = np.asarray(logmel.normalize_per_utterance(mel, mel_mask))
  np.testing.assert_allclose(feats[1, 3], np.concatenate([normed[1, 6], normed[1, 7]]), atol=1e-4)
  pairs = np.asarray(feats[0, :frames // 2]).reshape(-1, 80)
  np.testing.assert_allclose(pairs, normed[0, :2 * (frames // 2)], atol=1e-4)


def test_log_mels_in_row_chunks_match_one_pass():
  lengths = [6400, 3300, 6400, 1700, 5000, 6400]
  audio, mask = _batch(lengths, 6400)
  one = frontend.SpeechFrontend(mode="stacked", chunk_rows=0)
  chunked = frontend.SpeechFrontend(mode="stacked", chunk_rows=2)
  feats, feats_mask = jax.jit(one.apply)({}, audio, mask)
  chunk_feats, chunk_mask = jax.jit(chunked.apply)({}, audio, mask)
  np.testing.assert_array_equal(chunk_mask, feats_mask)
  np.testing.assert_allclose(chunk_feats, feats, atol=1e-4, rtol=1e-4)
  # A batch the chunk does not divide takes one pass.
  odd_feats, _ = jax.jit(chunked.apply)({}, audio[:5], mask[:5])
  np.testing.assert_allclose(odd_feats, feats[:5], atol=1e-4, rtol=1e-4)
