"""Kaldi-compatible log-mel filterbank features in JAX, batched and jit-able.

The speech frontend computes features on the accelerator inside the jitted step, so that a corpus
of raw 16 kHz audio serves any frontend and the host stays free. `log_mel_fbank` reproduces Kaldi's
`compute-fbank-feats` (and kaldi-native-fbank, its reference in the tests) frame for frame:

  per frame of `frame_length_ms` every `frame_shift_ms`:
    [dither] -> [remove DC offset] -> [raw log energy] -> pre-emphasis -> window -> zero-pad to
    the FFT size -> |rfft|^2 (or |rfft|) -> triangular mel filterbank -> log(max(., floor))

Conventions:
- Audio arrives as float32 in [-1, 1) (the batch contract); Kaldi works on int16-valued samples,
  so it is multiplied by `input_scale` (32768) first. `dither` is in those int16 units, as in Kaldi.
  With `input_scale=1.0` the features of [-1, 1) audio are the Kaldi ones shifted by -2 ln(32768)
  (power) wherever no bin hits the floor.
- Masks are prefix masks (1 for the valid samples at the start of a row, 0 for padding after them).
  A frame is valid iff Kaldi would emit it for the row's valid length: `num_frames(length)`.
  Valid frames read valid samples only, so their features do not depend on the padding that follows
  (its length or its values); invalid frames are set to `padding_value`.
- Shapes are static: T = num_frames(S) for audio of S samples.
- The FFT (jnp.fft.rfft) and the mel matmul run in float32; the matmul asks for HIGHEST precision
  because the default precision rounds its operands to bfloat16 on TPU (up to ~7e-3 in log-mel)
  and to TF32 on recent GPUs (~1e-3). float32 itself limits a frame's dynamic range: bins ~80 dB
  and more below the frame's loudest carry rounding noise, here as in Kaldi's float32 code
  (dither, Kaldi's default, hides it).

The filterbank and window are computed once in numpy (float64, then float32) and are constants of
the traced function. `stack_frames` and `normalize_per_utterance` give the w2v-BERT 2.0 frontend
(transformers' SeamlessM4TFeatureExtractor): log_mel_fbank -> normalize_per_utterance ->
stack_frames(stride=2), 160-dim features.
"""
import functools
import math
from typing import Any

import gin
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = Any

# Kaldi floors energies at FLT_EPSILON before the log (std::numeric_limits<float>::epsilon()).
FLOAT32_EPS = float(np.finfo(np.float32).eps)
WINDOWS = ("povey", "hanning", "hamming", "rectangular", "sine", "blackman")
# Above this many pieces per frame (gcd(frame, shift) small), a gather replaces the strided slices,
# whose count would bloat the program.
_MAX_FRAMING_PIECES = 32


def _window_size(sample_rate: float, frame_length_ms: float) -> int:
  # The same expression and evaluation order as Kaldi's FrameExtractionOptions::WindowSize().
  return int(sample_rate * 0.001 * frame_length_ms)


def _window_shift(sample_rate: float, frame_shift_ms: float) -> int:
  return int(sample_rate * 0.001 * frame_shift_ms)


def _fft_size(window_size: int, round_to_power_of_two: bool) -> int:
  return 1 << (window_size - 1).bit_length() if round_to_power_of_two else window_size


@gin.register
def num_frames(num_samples: ArrayLike, *, sample_rate: float = 16000, frame_length_ms: float = 25.0,
               frame_shift_ms: float = 10.0, snip_edges: bool = True) -> ArrayLike:
  """The number of frames Kaldi emits for `num_samples` samples (an int, or an integer array).

  With snip_edges, only frames that fit entirely in the signal; without, one frame per shift with
  the signal reflected at both ends.
  """
  window = _window_size(sample_rate, frame_length_ms)
  shift = _window_shift(sample_rate, frame_shift_ms)
  if isinstance(num_samples, (int, np.integer)):
    num_samples = int(num_samples)
    if snip_edges:
      return 0 if num_samples < window else 1 + (num_samples - window) // shift
    return (num_samples + shift // 2) // shift
  xp = jnp if isinstance(num_samples, jax.Array) else np
  num_samples = xp.asarray(num_samples)
  if snip_edges:
    return xp.where(num_samples < window, 0, 1 + (num_samples - window) // shift)
  return (num_samples + shift // 2) // shift


def _mel_scale(freq: np.ndarray) -> np.ndarray:
  return 1127.0 * np.log(1.0 + freq / 700.0)


@functools.lru_cache(maxsize=32)
def mel_filterbank(*, sample_rate: float = 16000, num_mel_bins: int = 80, fft_size: int = 512,
                   low_freq: float = 20.0, high_freq: float = 0.0) -> np.ndarray:
  """Kaldi's mel filterbank as a float32 matrix [fft_size // 2, num_mel_bins].

  Rows are FFT bins 0 .. fft_size/2 - 1 (Kaldi leaves the Nyquist bin out); columns are triangles
  equally spaced on the mel scale 1127 ln(1 + f/700) between low_freq and high_freq (high_freq <= 0
  means nyquist + high_freq). The result is cached and must not be modified.
  """
  nyquist = 0.5 * sample_rate
  high = high_freq if high_freq > 0.0 else nyquist + high_freq
  if num_mel_bins < 3:
    raise ValueError(f"log_mel_fbank: num_mel_bins={num_mel_bins} must be at least 3.")
  if not 0.0 <= low_freq < nyquist or not 0.0 < high <= nyquist or high <= low_freq:
    raise ValueError(
        f"log_mel_fbank: need 0 <= low_freq < high_freq <= nyquist ({nyquist} Hz); got "
        f"low_freq={low_freq}, high_freq={high_freq} (resolved to {high}).")
  mel_low, mel_high = _mel_scale(np.float64(low_freq)), _mel_scale(np.float64(high))
  delta = (mel_high - mel_low) / (num_mel_bins + 1)
  edges = mel_low + delta * np.arange(num_mel_bins + 2)
  left, center, right = edges[None, :-2], edges[None, 1:-1], edges[None, 2:]
  mel = _mel_scale(sample_rate / fft_size * np.arange(fft_size // 2))[:, None]
  up = (mel - left) / (center - left)
  down = (right - mel) / (right - center)
  weights = np.where((mel > left) & (mel < right), np.where(mel <= center, up, down), 0.0)
  empty = np.flatnonzero(~weights.any(axis=0))
  if empty.size:
    raise ValueError(
        f"log_mel_fbank: mel bins {empty.tolist()} cover no FFT bin; num_mel_bins={num_mel_bins} "
        f"is too large for an FFT of {fft_size} points between {low_freq} and {high} Hz.")
  weights = weights.astype(np.float32)
  weights.flags.writeable = False
  return weights


@functools.lru_cache(maxsize=32)
def window_function(window: str, size: int, blackman_coeff: float = 0.42) -> np.ndarray:
  """Kaldi's analysis windows (symmetric: a = 2 pi / (size - 1)) as float32 [size]."""
  a = 2.0 * math.pi / (size - 1) if size > 1 else 0.0
  i = np.arange(size, dtype=np.float64)
  if window == "povey":
    w = (0.5 - 0.5 * np.cos(a * i)) ** 0.85
  elif window == "hanning":
    w = 0.5 - 0.5 * np.cos(a * i)
  elif window == "hamming":
    w = 0.54 - 0.46 * np.cos(a * i)
  elif window == "sine":
    w = np.sin(0.5 * a * i)
  elif window == "rectangular":
    w = np.ones_like(i)
  elif window == "blackman":
    w = blackman_coeff - 0.5 * np.cos(a * i) + (0.5 - blackman_coeff) * np.cos(2 * a * i)
  else:
    raise ValueError(f"log_mel_fbank: window={window!r} is not one of {WINDOWS}.")
  w = w.astype(np.float32)
  w.flags.writeable = False
  return w


def _strided_frames(signal: Array, count: int, size: int, shift: int) -> Array:
  """[B, N] -> [B, count, size] with frame t = signal[:, t*shift : t*shift + size].

  Without a gather: the signal is cut into chunks of gcd(size, shift) samples, and each frame is
  size/gcd consecutive chunks, taken as that many strided slices.
  """
  batch = signal.shape[0]
  chunk = math.gcd(size, shift)
  pieces, stride = size // chunk, shift // chunk
  needed = (count - 1) * shift + size
  signal = signal[:, :needed]
  if pieces > _MAX_FRAMING_PIECES:
    index = shift * np.arange(count)[:, None] + np.arange(size)[None, :]
    return signal[:, index]
  chunks = signal.reshape(batch, needed // chunk, chunk)
  span = (count - 1) * stride + 1
  frames = jnp.stack([chunks[:, j:j + span:stride] for j in range(pieces)], axis=2)
  return frames.reshape(batch, count, size)


def _reflect_padded(audio: Array, lengths: Array, left: int, total: int) -> Array:
  """[B, S] -> [B, total]: sample m is audio[m - left] reflected into each row's [0, length)."""
  n = np.arange(total) - left
  length = jnp.maximum(lengths, 1)[:, None]
  r = jnp.mod(n[None, :], 2 * length)
  index = jnp.where(r < length, r, 2 * length - 1 - r)
  return jnp.take_along_axis(audio, index, axis=1)


@gin.register
def log_mel_fbank(
    audio: ArrayLike,
    audio_mask: ArrayLike,
    *,
    sample_rate: float = 16000,
    num_mel_bins: int = 80,
    frame_length_ms: float = 25.0,
    frame_shift_ms: float = 10.0,
    dither: float = 0.0,
    rng: Array | None = None,
    preemphasis: float = 0.97,
    remove_dc_offset: bool = True,
    window: str = "povey",
    blackman_coeff: float = 0.42,
    snip_edges: bool = True,
    round_to_power_of_two: bool = True,
    low_freq: float = 20.0,
    high_freq: float = 0.0,
    use_energy: bool = False,
    raw_energy: bool = True,
    energy_floor: float = 0.0,
    use_log_fbank: bool = True,
    use_power: bool = True,
    input_scale: float = 32768.0,
    floor: float = FLOAT32_EPS,
    padding_value: float = 0.0,
    precision: jax.lax.Precision = jax.lax.Precision.HIGHEST,
) -> tuple[Array, Array]:
  """Kaldi fbank features of a batch of padded audio.

  Args:
    audio: f32[B, S] in [-1, 1); padding samples may hold anything.
    audio_mask: int/bool [B, S], 1 for the valid prefix of each row, 0 for padding.
    sample_rate .. use_power: Kaldi's FbankOptions of the same names (`preemphasis` is
      preemph_coeff, `window` is window_type, `num_mel_bins` is mel_opts.num_bins); the defaults
      are Kaldi's except dither (0: features are deterministic unless asked otherwise).
    rng: PRNG key, required when dither > 0 (Gaussian noise of std `dither` per frame sample).
    input_scale: multiplies the audio before anything else (32768 gives Kaldi's int16 units).
    floor: energies are floored at this value before the log (Kaldi: FLT_EPSILON).
    padding_value: the value of every feature of an invalid frame.
    precision: of the mel matmul.

  Returns:
    (feats f32[B, T, num_mel_bins (+1 with use_energy, energy first)], feats_mask i32[B, T]),
    T = num_frames(S).
  """
  if window not in WINDOWS:
    raise ValueError(f"log_mel_fbank: window={window!r} is not one of {WINDOWS}.")
  if dither > 0.0 and rng is None:
    raise ValueError("log_mel_fbank: dither > 0 needs an `rng` key (or set dither=0.0).")
  frame_size = _window_size(sample_rate, frame_length_ms)
  shift = _window_shift(sample_rate, frame_shift_ms)
  if frame_size < 2 or shift < 1:
    raise ValueError(
        f"log_mel_fbank: frame_length_ms={frame_length_ms} and frame_shift_ms={frame_shift_ms} "
        f"give {frame_size} and {shift} samples at {sample_rate} Hz; need at least 2 and 1.")
  fft_size = _fft_size(frame_size, round_to_power_of_two)
  banks = mel_filterbank(sample_rate=sample_rate, num_mel_bins=num_mel_bins, fft_size=fft_size,
                         low_freq=low_freq, high_freq=high_freq)
  analysis_window = window_function(window, frame_size, blackman_coeff)

  audio = jnp.asarray(audio, jnp.float32)
  if audio.ndim != 2:
    raise ValueError(f"log_mel_fbank: audio must be [batch, samples]; got shape {audio.shape}.")
  valid = jnp.asarray(audio_mask) != 0
  audio = jnp.where(valid, audio * input_scale, 0.0)
  lengths = jnp.sum(valid, axis=1, dtype=jnp.int32)
  batch, samples = audio.shape
  count = num_frames(samples, sample_rate=sample_rate, frame_length_ms=frame_length_ms,
                     frame_shift_ms=frame_shift_ms, snip_edges=snip_edges)
  dim = num_mel_bins + int(use_energy)
  if count == 0:
    return jnp.full((batch, 0, dim), padding_value, jnp.float32), jnp.zeros((batch, 0), jnp.int32)

  if not snip_edges:
    # Kaldi centres frame t at t*shift + shift/2 and reflects the signal at both ends of the
    # valid part, so each row gets its own reflection at its own length.
    left = frame_size // 2 - shift // 2
    audio = _reflect_padded(audio, lengths, left, (count - 1) * shift + frame_size)
  frames = _strided_frames(audio, count, frame_size, shift)  # [B, T, W]

  if dither > 0.0:
    frames = frames + dither * jax.random.normal(rng, frames.shape, jnp.float32)
  offset = jnp.mean(frames, axis=-1, keepdims=True) if remove_dc_offset else 0.0
  log_energy = None
  if use_energy and raw_energy:
    centered = frames - offset
    log_energy = jnp.log(jnp.maximum(jnp.sum(centered * centered, axis=-1), FLOAT32_EPS))
  if preemphasis != 0.0:
    # Kaldi's y[i] = (x[i] - m) - p (x[i-1] - m), y[0] = (1 - p)(x[0] - m), written as
    # (x[i] - x[i-1]) + (1 - p)(x[i-1] - m) with x[-1] = x[0]: float32 then rounds the large
    # sample values only after scaling them by (1 - p), which brings the quiet bins of a frame
    # ~3x closer to a float64 computation than the literal order does.
    previous = jnp.concatenate([frames[..., :1], frames[..., :-1]], axis=-1)
    frames = (frames - previous) + (1.0 - preemphasis) * (previous - offset)
  else:
    frames = frames - offset
  frames = frames * analysis_window
  if use_energy and not raw_energy:
    log_energy = jnp.log(jnp.maximum(jnp.sum(frames * frames, axis=-1), FLOAT32_EPS))

  spectrum = jnp.fft.rfft(frames, n=fft_size, axis=-1)[..., :fft_size // 2]
  power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  if not use_power:
    power = jnp.sqrt(power)
  mel = jnp.matmul(power, banks, precision=precision)
  if use_log_fbank:
    mel = jnp.log(jnp.maximum(mel, floor))
  if use_energy:
    if energy_floor > 0.0:
      log_energy = jnp.maximum(log_energy, math.log(energy_floor))
    mel = jnp.concatenate([log_energy[..., None], mel], axis=-1)

  frame_count = num_frames(lengths, sample_rate=sample_rate, frame_length_ms=frame_length_ms,
                           frame_shift_ms=frame_shift_ms, snip_edges=snip_edges)
  feats_mask = jnp.arange(count)[None, :] < frame_count[:, None]
  feats = jnp.where(feats_mask[..., None], mel, padding_value).astype(jnp.float32)
  return feats, feats_mask.astype(jnp.int32)


@gin.register
def stack_frames(feats: ArrayLike, mask: ArrayLike, stride: int = 2, *,
                 padding_value: float = 0.0) -> tuple[Array, Array]:
  """Stacks `stride` consecutive frames: [B, T, D] -> [B, ceil(T / stride), D * stride].

  w2v-BERT 2.0 takes 2 stacked 80-dim frames (160 dims). T is padded up to a multiple of stride
  with `padding_value` (as SeamlessM4TFeatureExtractor's pad_to_multiple_of). A stacked frame is
  valid iff all of its frames are (for stride 2, that is transformers' `attention_mask[:, 1::2]`);
  its values are kept either way.
  """
  if stride < 1:
    raise ValueError(f"stack_frames: stride={stride} must be at least 1.")
  feats = jnp.asarray(feats)
  mask = jnp.asarray(mask)
  batch, length, dim = feats.shape
  extra = -length % stride
  if extra:
    feats = jnp.pad(feats, ((0, 0), (0, extra), (0, 0)), constant_values=padding_value)
    mask = jnp.pad(mask, ((0, 0), (0, extra)))
  stacked_length = (length + extra) // stride
  feats = feats.reshape(batch, stacked_length, dim * stride)
  mask = jnp.min(mask.reshape(batch, stacked_length, stride), axis=-1)
  return feats, mask.astype(jnp.int32)


@gin.register
def normalize_per_utterance(feats: ArrayLike, mask: ArrayLike, *, epsilon: float = 1e-7,
                            ddof: int = 1, padding_value: float = 0.0) -> Array:
  """Per-utterance, per-bin mean and variance normalization over the valid frames.

  (x - mean) / sqrt(var + epsilon) with var over the valid frames with `ddof` (1 as transformers'
  SeamlessM4TFeatureExtractor, which uses numpy's var(ddof=1)); padded frames become
  `padding_value`. With at most `ddof` valid frames the divisor is clamped at 1 (numpy would
  give NaN).
  """
  feats = jnp.asarray(feats, jnp.float32)
  valid = (jnp.asarray(mask) != 0)[..., None]
  count = jnp.sum(valid, axis=1, keepdims=True, dtype=jnp.float32)
  mean = jnp.sum(jnp.where(valid, feats, 0.0), axis=1, keepdims=True) / jnp.maximum(count, 1.0)
  centered = jnp.where(valid, feats - mean, 0.0)
  var = jnp.sum(centered * centered, axis=1, keepdims=True) / jnp.maximum(count - ddof, 1.0)
  return jnp.where(valid, centered / jnp.sqrt(var + epsilon), padding_value)
