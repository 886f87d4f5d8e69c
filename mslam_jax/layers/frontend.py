"""Speech frontend: on-device log-mel features, then conv subsampling or stacked frames.

Two modes (`SpeechFrontend.mode`, set in gin):
  * "conv2d" (w2v-BERT / mSLAM): 80-dim log-mel -> two 3x3 stride-2 2-D convolutions (ReLU) over
    (time, frequency): 4x time subsampling, features of conv_channels * ceil(80 / 4) dims.
  * "stacked" (w2v-BERT 2.0): 80-dim log-mel, normalized per utterance, stacked 2 frames at a
    time: 160 dims at 2x subsampling.

The frontend returns the pre-projection features (the quantizer's input) and their mask;
FeatureProjection (LayerNorm + Dense to the model dim + dropout) is applied separately.

Padding: convolutions use a fixed padding of 1 on each side (never "SAME", whose left padding
depends on the padded length's parity) and padded frames are zeroed before each convolution, so
a clip's features do not depend on how much padding its batch has. A subsampled frame is valid
iff the input frame at its centre is valid (mask[:, ::2]).
"""
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mslam_jax.layers import attention
from mslam_jax.layers import logmel
from mslam_jax.layers import matmul

Array = jax.Array
DType = Any

FRONTEND_MODES = ("conv2d", "stacked")


def conv_output_length(length: int, num_convs: int = 2) -> int:
  """Frames after `num_convs` stride-2 convolutions (kernel 3, padding 1 on each side)."""
  for _ in range(num_convs):
    length = (length + 1) // 2
  return length


@gin.configurable
class SpeechFrontend(nn.Module):
  """Audio [B, S] -> (features [B, T', F], mask [B, T']).

  Attributes:
    mode: "conv2d" or "stacked" (see the module docstring).
    num_mel_bins: log-mel bins (80).
    conv_channels: output channels of both convolutions ("conv2d").
    stack_stride: frames stacked together ("stacked").
    normalize: per-utterance mean/variance normalization of the log-mels over valid frames
      (always on in "stacked", as SeamlessM4TFeatureExtractor does).
    chunk_rows: on a CPU backend, the log-mels of this many clips at a time (a `lax.map` over
      chunks; 0: the whole batch in one pass). Each clip's framed signal and spectrum take ~1.3 MB,
      so a whole batch's outgrow the caches between ops: 48 clips of 4 s took 85 ms in one pass and
      34 ms in chunks of 4 (2 cores). Accelerators always take the batch in one pass.
  """
  mode: str = "conv2d"
  num_mel_bins: int = 80
  conv_channels: int = 128
  stack_stride: int = 2
  normalize: bool = True
  chunk_rows: int = 4
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @property
  def subsampling(self) -> int:
    return 4 if self.mode == "conv2d" else self.stack_stride

  @property
  def output_dim(self) -> int:
    if self.mode == "conv2d":
      return self.conv_channels * conv_output_length(self.num_mel_bins)
    return self.num_mel_bins * self.stack_stride

  def log_mel(self, audio: Array, audio_mask: Array) -> tuple[Array, Array]:
    """Normalized log-mel features [B, T, num_mel_bins] (fp32) and their mask."""
    batch = audio.shape[0]
    rows = self.chunk_rows
    if rows and batch > rows and batch % rows == 0 and jax.default_backend() == "cpu":
      feats, mask = jax.lax.map(
          lambda chunk: logmel.log_mel_fbank(*chunk, num_mel_bins=self.num_mel_bins),
          (audio.reshape(batch // rows, rows, -1), audio_mask.reshape(batch // rows, rows, -1)))
      feats, mask = feats.reshape(batch, *feats.shape[2:]), mask.reshape(batch, -1)
    else:
      feats, mask = logmel.log_mel_fbank(audio, audio_mask, num_mel_bins=self.num_mel_bins)
    if self.normalize or self.mode == "stacked":
      feats = logmel.normalize_per_utterance(feats, mask)
    return feats, mask

  def stacked_log_mel(self, audio: Array, audio_mask: Array) -> tuple[Array, Array]:
    """Log-mels stacked to the frontend's frame rate: [B, T', num_mel_bins * subsampling].

    Parameter-free input for a frozen quantizer (BEST-RQ), aligned frame by frame with the
    frontend's output and masked like it.
    """
    feats, mask = self.log_mel(audio, audio_mask)
    stacked, _ = logmel.stack_frames(feats, mask, stride=self.subsampling)
    sub_mask = mask[:, ::self.subsampling].astype(jnp.int32)
    return jnp.where(sub_mask[..., None] != 0, stacked, 0.0), sub_mask

  @nn.compact
  def __call__(self, audio: Array, audio_mask: Array, deterministic: bool = True) -> tuple[Array, Array]:
    del deterministic  # No dropout in the frontend; kept for a uniform call signature.
    if self.mode not in FRONTEND_MODES:
      raise ValueError(f"SpeechFrontend.mode={self.mode!r}; choose one of {FRONTEND_MODES}")
    feats, mask = self.log_mel(audio, audio_mask)
    if self.mode == "stacked":
      feats, mask = logmel.stack_frames(feats, mask, stride=self.stack_stride)
      feats = jnp.where(mask[..., None] != 0, feats, 0.0)
      return nn.with_logical_constraint(feats.astype(self.dtype), ("batch", "length", None)), mask

    x = feats[..., None]  # [B, T, F, 1]: time x frequency image with one channel.
    for i in range(2):
      x = jnp.where(mask[:, :, None, None] != 0, x, 0.0)
      x = nn.Conv(
          self.conv_channels, kernel_size=(3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
          dtype=self.dtype, param_dtype=self.param_dtype,
          kernel_init=attention.partitioned(nn.initializers.lecun_normal(), (None, None, None, "conv")),
          bias_init=attention.partitioned(nn.initializers.zeros, ("conv",)), name=f"conv_{i}")(x)
      x = nn.relu(x)
      mask = mask[:, ::2]
    batch, length, freq, channels = x.shape
    x = jnp.where(mask[:, :, None, None] != 0, x, 0.0).reshape(batch, length, freq * channels)
    return nn.with_logical_constraint(x, ("batch", "length", None)), mask.astype(jnp.int32)


@gin.configurable
class FeatureProjection(nn.Module):
  """LayerNorm over the frontend features, Dense to the model dim, dropout (HF's feature_projection).

  `normalize` alone gives the layer-normed features: what wav2vec 2.0 / w2v-BERT quantize (fairseq
  and HF both feed the quantizer the post-extract layer norm's output, not the raw features).
  """
  embed_dim: int
  dropout_rate: float = 0.0
  layer_norm_epsilon: float = 1e-5
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  def setup(self):
    self.layer_norm = nn.LayerNorm(
        epsilon=self.layer_norm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
        use_fast_variance=False, scale_init=attention.partitioned(nn.initializers.ones, (None,)),
        bias_init=attention.partitioned(nn.initializers.zeros, (None,)))
    self.projection = nn.Dense(
        self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype, dot_general=matmul.dot_general,
        kernel_init=attention.partitioned(nn.initializers.lecun_normal(), (None, "embed")),
        bias_init=attention.partitioned(nn.initializers.zeros, ("embed",)))
    self.dropout = nn.Dropout(self.dropout_rate)

  def normalize(self, features: Array) -> Array:
    return self.layer_norm(features)

  def __call__(self, features: Array, deterministic: bool = True) -> Array:
    x = self.dropout(self.projection(self.layer_norm(features)), deterministic=deterministic)
    return nn.with_logical_constraint(x, ("batch", "length", "embed"))
