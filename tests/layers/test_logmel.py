"""The JAX featurizer against kaldi-native-fbank (Kaldi's fbank in C++), plus its mask contract."""
import functools

import jax
import jax.numpy as jnp
import kaldi_native_fbank as knf
import numpy as np
import pytest

from mslam_jax.layers import logmel

SR = 16000
# Log-mel max abs difference allowed against kaldi-native-fbank. Both compute in float32; on audio
# whose mel bins lie within ~60 dB of each frame's loudest bin (any recording with a noise floor)
# the two agree to ~1e-4 (float64 numpy agrees with each to the same order).
ATOL = 1e-3


def kaldi_fbank(audio, *, input_scale=32768.0, sample_rate=SR, num_mel_bins=80,
                frame_length_ms=25.0, frame_shift_ms=10.0, preemphasis=0.97,
                remove_dc_offset=True, window="povey", blackman_coeff=0.42, snip_edges=True,
                round_to_power_of_two=True, low_freq=20.0, high_freq=0.0, use_energy=False,
                raw_energy=True, energy_floor=0.0, use_log_fbank=True, use_power=True, dither=0.0):
  """kaldi-native-fbank's features [T, D] of one clip, with our keyword names."""
  opts = knf.FbankOptions()
  frame = opts.frame_opts
  frame.samp_freq = sample_rate
  frame.frame_length_ms = frame_length_ms
  frame.frame_shift_ms = frame_shift_ms
  frame.dither = dither
  frame.preemph_coeff = preemphasis
  frame.remove_dc_offset = remove_dc_offset
  frame.window_type = window
  frame.blackman_coeff = blackman_coeff
  frame.snip_edges = snip_edges
  frame.round_to_power_of_two = round_to_power_of_two
  opts.mel_opts.num_bins = num_mel_bins
  opts.mel_opts.low_freq = low_freq
  opts.mel_opts.high_freq = high_freq
  opts.use_energy = use_energy
  opts.raw_energy = raw_energy
  opts.energy_floor = energy_floor
  opts.use_log_fbank = use_log_fbank
  opts.use_power = use_power
  fbank = knf.OnlineFbank(opts)
  fbank.accept_waveform(sample_rate, (np.asarray(audio, np.float64) * input_scale).astype(np.float32))
  fbank.input_finished()
  frames = [np.array(fbank.get_frame(i)) for i in range(fbank.num_frames_ready)]
  return np.stack(frames) if frames else np.zeros([0, num_mel_bins + int(use_energy)], np.float32)


def pad_batch(clips, length=None, fill=0.0):
  """Clips -> (audio [B, S], mask [B, S]); `fill` is written into the padding."""
  length = length or max(len(c) for c in clips)
  audio = np.full([len(clips), length], fill, np.float32)
  mask = np.zeros([len(clips), length], np.int32)
  for i, clip in enumerate(clips):
    audio[i, :len(clip)] = clip
    mask[i, :len(clip)] = 1
  return audio, mask


def speech_like(seconds, seed):
  """A voiced harmonic source with gliding pitch, a syllable-rate envelope and a noise floor."""
  rs = np.random.RandomState(seed)
  t = np.arange(int(seconds * SR)) / SR
  f0 = 120 + 60 * np.sin(2 * np.pi * 0.7 * t + rs.uniform(0, 6))
  phase = 2 * np.pi * np.cumsum(f0) / SR
  voiced = sum(np.sin(k * phase) / k for k in range(1, 30) if k * 250 < SR / 2)
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
  return (0.1 * envelope * voiced + 0.01 * rs.randn(len(t))).astype(np.float32)


def sweep(seconds, amplitude=0.5, noise=0.0, seed=0):
  """Linear sine sweep 50 Hz -> 7.9 kHz, with optional white noise of std `noise`."""
  t = np.arange(int(seconds * SR)) / SR
  x = amplitude * np.sin(2 * np.pi * (50 * t + (7900 - 50) / (2 * seconds) * t ** 2))
  return (x + noise * np.random.RandomState(seed).randn(len(t))).astype(np.float32)


CLIPS = {
    "noise_1s": lambda: np.random.RandomState(1).uniform(-0.5, 0.5, SR).astype(np.float32),
    "quiet_noise": lambda: (1e-4 * np.random.RandomState(2).randn(8000)).astype(np.float32),
    "speech_like_3s": lambda: speech_like(3.0, seed=3),
    "sweep_with_noise_floor": lambda: sweep(2.0, amplitude=0.25, noise=0.03),
    "one_frame": lambda: np.random.RandomState(4).randn(400).astype(np.float32) * 0.1,
    "one_frame_and_then_some": lambda: np.random.RandomState(5).randn(559).astype(np.float32) * 0.1,
    "two_frames": lambda: np.random.RandomState(6).randn(560).astype(np.float32) * 0.1,
    "long_8s": lambda: speech_like(8.0, seed=7),
}

jit_fbank = jax.jit(logmel.log_mel_fbank, static_argnames=(
    "sample_rate", "num_mel_bins", "frame_length_ms", "frame_shift_ms", "preemphasis",
    "remove_dc_offset", "window", "blackman_coeff", "snip_edges", "round_to_power_of_two",
    "low_freq", "high_freq", "use_energy", "raw_energy", "energy_floor", "use_log_fbank",
    "use_power", "dither"))


@pytest.mark.parametrize("snip_edges", [True, False])
def test_batch_of_clips_matches_kaldi_native_fbank(snip_edges):
  clips = [make() for make in CLIPS.values()]
  audio, mask = pad_batch(clips, fill=0.3)  # non-zero padding must not matter
  feats, feats_mask = jit_fbank(audio, mask, snip_edges=snip_edges)
  feats, feats_mask = np.asarray(feats), np.asarray(feats_mask)
  assert feats.shape == (len(clips), logmel.num_frames(audio.shape[1], snip_edges=snip_edges), 80)
  assert feats.dtype == np.float32 and feats_mask.dtype == np.int32
  for row, (name, clip) in enumerate(zip(CLIPS, clips)):
    expected = kaldi_fbank(clip, snip_edges=snip_edges)
    count = len(expected)
    np.testing.assert_array_equal(feats_mask[row], np.arange(feats.shape[1]) < count, err_msg=name)
    np.testing.assert_allclose(feats[row, :count], expected, rtol=0, atol=ATOL, err_msg=name)
    assert np.all(feats[row, count:] == 0.0), name


def test_pure_sweep_agrees_up_to_float32_dynamic_range():
  # A pure tone leaves bins ~100 dB below the frame's peak, where any float32 FFT (Kaldi's too)
  # returns rounding noise; the agreement there is relative to the frame's energy.
  clip = sweep(2.0)
  expected = kaldi_fbank(clip).astype(np.float64)
  feats = np.asarray(jit_fbank(clip[None], np.ones([1, len(clip)], np.int32))[0][0], np.float64)
  peak = np.exp(expected).max(axis=-1, keepdims=True)
  assert np.max(np.abs(np.exp(feats) - np.exp(expected)) / peak) < 1e-4
  loud = np.exp(expected) > 1e-6 * peak
  assert loud.mean() > 0.05
  assert np.max(np.abs(feats - expected)[loud]) < ATOL


@pytest.mark.parametrize("options", [
    dict(window="hamming", preemphasis=0.0, remove_dc_offset=False, use_power=False),
    dict(window="blackman", use_energy=True, raw_energy=False, energy_floor=1.0,
         frame_shift_ms=10.0625),  # 161-sample shift: gcd(400, 161) = 1 frames by a gather
    dict(window="rectangular", use_energy=True, frame_length_ms=20.0, frame_shift_ms=12.5,
         round_to_power_of_two=False),
    dict(window="sine", num_mel_bins=40, low_freq=64.0, high_freq=-400.0),
    dict(sample_rate=8000, num_mel_bins=23, high_freq=3700.0, snip_edges=False),
], ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
def test_options_match_kaldi_native_fbank(options):
  sample_rate = options.get("sample_rate", SR)
  clips = [speech_like(1.0, seed=8)[:sample_rate], speech_like(0.5, seed=9)[:sample_rate // 2]]
  audio, mask = pad_batch(clips)
  feats, feats_mask = jit_fbank(audio, mask, **options)
  for row, clip in enumerate(clips):
    expected = kaldi_fbank(clip, **options)
    assert int(np.sum(feats_mask[row])) == len(expected)
    np.testing.assert_allclose(feats[row, :len(expected)], expected, rtol=0, atol=ATOL)


def test_linear_mel_energies_match_kaldi_native_fbank():
  clip = speech_like(0.5, seed=10)
  expected = kaldi_fbank(clip, use_log_fbank=False, window="hanning")
  feats, _ = jit_fbank(clip[None], np.ones([1, len(clip)]), use_log_fbank=False, window="hanning")
  np.testing.assert_allclose(feats[0], expected, rtol=ATOL, atol=0)


def test_filterbank_matches_kaldi_native_fbank():
  opts = knf.MelBanksOptions()
  opts.num_bins = 80
  expected = knf.MelBanks(opts, knf.FrameExtractionOptions(), 1.0).get_matrix()  # [80, 257]
  banks = logmel.mel_filterbank(num_mel_bins=80, fft_size=512)
  assert banks.shape == (256, 80)
  assert not expected[:, 256].any()  # Kaldi leaves the Nyquist bin out, as we do
  np.testing.assert_allclose(banks.T, expected[:, :256], rtol=0, atol=1e-4)


@pytest.mark.parametrize("snip_edges", [True, False])
def test_num_frames_matches_kaldi_native_fbank(snip_edges):
  lengths = [0, 1, 100, 399, 400, 401, 559, 560, 719, 720, 16000, 16079, 16080]
  expected = [len(kaldi_fbank(np.zeros(n, np.float32), snip_edges=snip_edges)) if n else 0
              for n in lengths]
  got = [logmel.num_frames(n, snip_edges=snip_edges) for n in lengths]
  assert got == expected
  assert all(isinstance(n, int) for n in got)
  np.testing.assert_array_equal(logmel.num_frames(np.array(lengths), snip_edges=snip_edges), expected)
  np.testing.assert_array_equal(logmel.num_frames(jnp.array(lengths), snip_edges=snip_edges), expected)


@pytest.mark.parametrize("snip_edges", [True, False])
def test_valid_frames_do_not_depend_on_padding_or_other_rows(snip_edges):
  clip = speech_like(0.8, seed=11)
  alone, alone_mask = jit_fbank(clip[None], np.ones([1, len(clip)], np.int32), snip_edges=snip_edges)
  count = int(alone_mask.sum())
  length = len(clip) + 4000
  other = np.random.RandomState(12).randn(length).astype(np.float32)
  audio, mask = pad_batch([clip, clip, clip, other], length=length)
  audio[0, len(clip):] = np.nan
  audio[1, len(clip):] = 1.0
  audio[2, len(clip):] = other[len(clip):]
  feats, feats_mask = jit_fbank(audio, mask, snip_edges=snip_edges)
  for row in range(3):
    assert int(feats_mask[row].sum()) == count
    np.testing.assert_allclose(feats[row, :count], alone[0], rtol=0, atol=1e-5)
    assert np.all(np.asarray(feats[row, count:]) == 0.0)
  assert np.all(np.asarray(feats_mask[3]) == 1)


def test_padding_value_marks_invalid_frames_not_silence():
  audio, mask = pad_batch([np.full(800, 0.1, np.float32), np.zeros(300, np.float32),
                           np.zeros(800, np.float32)])
  feats, feats_mask = jit_fbank(audio, mask, padding_value=-7.0)
  np.testing.assert_array_equal(feats_mask, [[1, 1, 1], [0, 0, 0], [1, 1, 1]])
  assert np.all(np.asarray(feats[1]) == -7.0)
  # Digital silence inside a clip is not padding: it is floored at log(FLT_EPSILON), as in Kaldi.
  np.testing.assert_allclose(feats[2], np.log(np.finfo(np.float32).eps), rtol=1e-6)


def test_too_short_batch_has_no_frames():
  feats, feats_mask = logmel.log_mel_fbank(np.zeros([3, 399]), np.ones([3, 399]))
  assert feats.shape == (3, 0, 80) and feats_mask.shape == (3, 0)


def test_input_scale_shifts_log_power():
  clip = 0.1 * np.random.RandomState(13).randn(1, 1600).astype(np.float32)
  kaldi_units, _ = jit_fbank(clip, np.ones_like(clip))
  unit_scale, _ = jit_fbank(clip * 32768.0, np.ones_like(clip), input_scale=1.0)
  float_units, _ = jit_fbank(clip, np.ones_like(clip), input_scale=1.0)
  np.testing.assert_allclose(unit_scale, kaldi_units, rtol=0, atol=1e-4)
  np.testing.assert_allclose(float_units, kaldi_units - 2 * np.log(32768.0), rtol=0, atol=1e-3)


def test_dither_needs_rng_and_matches_kaldi_statistics():
  silence = np.zeros([1, 5 * SR], np.float32)
  with pytest.raises(ValueError, match="rng"):
    logmel.log_mel_fbank(silence, np.ones_like(silence), dither=1.0)
  fbank = functools.partial(jit_fbank, dither=1.0)
  first, _ = fbank(silence, np.ones_like(silence), rng=jax.random.PRNGKey(0))
  again, _ = fbank(silence, np.ones_like(silence), rng=jax.random.PRNGKey(0))
  other, _ = fbank(silence, np.ones_like(silence), rng=jax.random.PRNGKey(1))
  np.testing.assert_array_equal(first, again)
  assert np.abs(np.asarray(first) - np.asarray(other)).max() > 0.1
  # Dither is in int16 units as in Kaldi: on silence, the per-bin mean over 500 frames of our
  # noise spectrum matches kaldi-native-fbank's (whose noise is its own and unseeded, so the match is
  # statistical: four draws a side keep the chance of a spurious miss negligible).
  ours = np.mean([np.asarray(fbank(silence, np.ones_like(silence), rng=jax.random.PRNGKey(k))[0][0]).mean(0)
                  for k in range(4)], axis=0)
  expected = np.mean([kaldi_fbank(silence[0], dither=1.0).mean(0) for _ in range(4)], axis=0)
  np.testing.assert_allclose(ours, expected, rtol=0, atol=0.15)


def test_shapes_are_static():
  shapes = jax.eval_shape(logmel.log_mel_fbank, jax.ShapeDtypeStruct((4, 48000), jnp.float32),
                          jax.ShapeDtypeStruct((4, 48000), jnp.int32))
  assert shapes[0].shape == (4, 298, 80) and shapes[0].dtype == jnp.float32
  assert shapes[1].shape == (4, 298) and shapes[1].dtype == jnp.int32


@pytest.mark.parametrize("options, message", [
    (dict(window="gaussian"), "window"),
    (dict(num_mel_bins=2), "num_mel_bins"),
    (dict(num_mel_bins=200), "too large"),
    (dict(low_freq=9000.0), "low_freq"),
    (dict(low_freq=4000.0, high_freq=3000.0), "high_freq"),
])
def test_bad_options_name_the_setting(options, message):
  with pytest.raises(ValueError, match=message):
    logmel.log_mel_fbank(np.zeros([1, 800]), np.ones([1, 800]), **options)


def test_stack_frames_pairs_frames_as_w2v_bert():
  feats = np.random.RandomState(16).randn(3, 5, 80).astype(np.float32)
  lengths = np.array([5, 3, 4])
  mask = (np.arange(5)[None] < lengths[:, None]).astype(np.int32)
  stacked, stacked_mask = logmel.stack_frames(feats, mask, stride=2)
  assert stacked.shape == (3, 3, 160) and stacked_mask.shape == (3, 3)
  np.testing.assert_array_equal(stacked[:, 1], np.concatenate([feats[:, 2], feats[:, 3]], -1))
  np.testing.assert_array_equal(stacked[:, 2, :80], feats[:, 4])
  np.testing.assert_array_equal(stacked[:, 2, 80:], 0.0)  # the frame added to make T even
  # transformers' SeamlessM4TFeatureExtractor: pad T to even, then attention_mask[:, 1::2].
  np.testing.assert_array_equal(stacked_mask, np.pad(mask, ((0, 0), (0, 1)))[:, 1::2])
  tripled, tripled_mask = logmel.stack_frames(feats, mask, stride=3)
  assert tripled.shape == (3, 2, 240)
  np.testing.assert_array_equal(tripled_mask, [[1, 0], [1, 0], [1, 0]])


def test_normalize_per_utterance_uses_valid_frames_only():
  rs = np.random.RandomState(17)
  feats = (3.0 + 2.0 * rs.randn(3, 50, 80)).astype(np.float32)
  lengths = [50, 20, 1]
  mask = (np.arange(50)[None] < np.array(lengths)[:, None]).astype(np.int32)
  garbage = np.where(mask[..., None] == 1, feats, 1e4).astype(np.float32)
  normalized = np.asarray(logmel.normalize_per_utterance(garbage, mask))
  for row, length in enumerate(lengths[:2]):
    valid = feats[row, :length]
    # transformers' SeamlessM4TFeatureExtractor: (x - mean) / sqrt(var(ddof=1) + 1e-7) per bin.
    expected = (valid - valid.mean(0)) / np.sqrt(valid.var(0, ddof=1) + 1e-7)
    np.testing.assert_allclose(normalized[row, :length], expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(normalized[row, :length].mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(normalized[row, :length].std(0, ddof=1), 1.0, atol=1e-3)
  assert np.all(normalized[:, :][mask == 0] == 0.0)
  assert np.all(np.isfinite(normalized[2]))  # one valid frame: no NaN


def test_w2v_bert_frontend_matches_transformers_seamless_m4t_feature_extractor():
  # Runs where the optional interop extra (transformers) is installed.
  transformers = pytest.importorskip("transformers")
  extractor = transformers.SeamlessM4TFeatureExtractor()
  clips = [speech_like(1.5, seed=18), speech_like(1.0, seed=19)[:12345], speech_like(0.5, seed=20)]
  expected = extractor(clips, sampling_rate=SR, return_tensors="np")
  audio, mask = pad_batch(clips)

  @jax.jit
  def frontend(audio, mask):
    feats, feats_mask = logmel.log_mel_fbank(audio, mask)
    return logmel.stack_frames(logmel.normalize_per_utterance(feats, feats_mask), feats_mask)

  feats, feats_mask = frontend(audio, mask)
  np.testing.assert_array_equal(feats_mask, expected["attention_mask"])
  # transformers computes in float64; ours (float32) agrees to ~3e-5 after normalization.
  np.testing.assert_allclose(feats, expected["input_features"], rtol=0, atol=1e-4)
