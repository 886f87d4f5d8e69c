"""The mSLAM encoder: speech frontend, speech-only Conformer layers, shared layers, text input.

  speech: audio -> SpeechFrontend -> features -> FeatureProjection (layer norm: the Gumbel quantizer's
          input; Dense) -> x
          -> speech_lower (contrastive_layer blocks) -> contrastive_out
          -> speech_upper (the remaining speech-only blocks) -> speech_out
          -> shared (num_shared_layers blocks) -> frames -> pooled
  text:   tokens -> TextEmbedding -> shared -> frames -> pooled

The module is built in setup(), so a parent module (MSLAMModel) can call each stage on its own
(e.g. mask the projected speech, concatenate speech and text for TLM, then call shared_layers).
Block hyper-parameters come from gin on ConformerStack; sizes and dtypes from MSLAMEncoder.
"""
from typing import Any

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mslam_jax.data import phones
from mslam_jax.layers import attention
from mslam_jax.layers import conformer
from mslam_jax.layers import frontend
from mslam_jax.layers import pooling
from mslam_jax.layers import text_embedding
from mslam_jax.models import masking

Array = jax.Array
DType = Any


@gin.configurable
class MSLAMEncoder(nn.Module):
  """Speech-only + shared Conformer stacks with speech and text inputs.

  Attributes:
    embed_dim: model dimension D.
    num_speech_layers: N speech-only blocks.
    num_shared_layers: M shared blocks.
    contrastive_layer: the speech-only block whose output feeds the contrastive loss (1-based;
      None means the last speech-only block, N).
    vocab_size: text vocabulary (4096 characters).
    dropout_rate: dropout after the speech projection and the text embedding.
    pooling: "mean" or "attention" (see layers/pooling.py); pooling_heads for "attention".
    num_languages: 0, or the size of a table of language vectors (above every language id of the
      batch contract's `lang`; the registry holds ~355): each is added to every input of the
      shared stack of its language, text and speech alike (Maestro-U's language embeddings), so
      that the shared layers can write a clip in its language's spelling. Zero at init; a
      negative id adds nothing (language unknown). On the learning benchmark (two seeds): greedy CER
      0.196 -> 0.182, but the speech-only ablation's zero-shot CER improved more than the joint
      model's (gain 8.3 % -> 4.3 %; benchmarks/README.md, thirty-first pass): off by default.
    phone_inputs: a second input embedding, of IPA phones (mslam_jax.data.phones): the input of
      phone-level text injection (MSLAMModel.text_ctc_input = "phones") and the tied head of
      ObjectiveWeights.phone_ctc.
    dtype: compute dtype (e.g. jnp.bfloat16); param_dtype: parameter dtype (float32).
  """
  embed_dim: int = 1024
  num_speech_layers: int = 8
  num_shared_layers: int = 16
  contrastive_layer: int | None = None
  vocab_size: int = 4096
  dropout_rate: float = 0.0
  pooling: str = "mean"
  pooling_heads: int = 8
  num_languages: int = 0
  phone_inputs: bool = False
  dtype: DType = jnp.float32
  param_dtype: DType = jnp.float32

  @property
  def num_contrastive_layers(self) -> int:
    return self.num_speech_layers if self.contrastive_layer is None else self.contrastive_layer

  def setup(self):
    if not 0 <= self.num_contrastive_layers <= self.num_speech_layers:
      raise ValueError(f"MSLAMEncoder.contrastive_layer={self.contrastive_layer} must lie in "
                       f"[0, num_speech_layers={self.num_speech_layers}]")
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.frontend = frontend.SpeechFrontend(**dtypes, name="frontend")
    self.speech_projection = frontend.FeatureProjection(
        self.embed_dim, dropout_rate=self.dropout_rate, **dtypes, name="speech_projection")
    self.speech_lower = conformer.ConformerStack(num_layers=self.num_contrastive_layers, **dtypes,
                                                 name="speech_lower")
    self.speech_upper = conformer.ConformerStack(
        num_layers=self.num_speech_layers - self.num_contrastive_layers, **dtypes, name="speech_upper")
    self.shared = conformer.ConformerStack(num_layers=self.num_shared_layers, **dtypes, name="shared")
    self.text_embedding = text_embedding.TextEmbedding(
        vocab_size=self.vocab_size, embed_dim=self.embed_dim, dropout_rate=self.dropout_rate, **dtypes,
        name="text_embedding")
    if self.phone_inputs:
      self.phone_embedding = text_embedding.TextEmbedding(
          vocab_size=phones.VOCAB_SIZE, embed_dim=self.embed_dim, dropout_rate=self.dropout_rate, **dtypes,
          name="phone_embedding")
    self.pooler = pooling.Pooling(kind=self.pooling, num_heads=self.pooling_heads, **dtypes, name="pooler")
    self.speech_mask_embedding = self.param(
        "speech_mask_embedding", attention.partitioned(nn.initializers.uniform(1.0), ("embed",)),
        (self.embed_dim,), self.param_dtype)
    if self.num_languages > 0:
      self.language_embedding = self.param(
          "language_embedding", attention.partitioned(nn.initializers.zeros, (None, "embed")),
          (self.num_languages, self.embed_dim), self.param_dtype)

  # ---- stages ----

  def speech_frontend(self, audio: Array, audio_mask: Array,
                      deterministic: bool = True) -> tuple[Array, Array]:
    """Audio [B, S] -> (pre-projection features [B, T, F], mask [B, T])."""
    return self.frontend(audio, audio_mask, deterministic)

  def speech_quantizer_input(self, audio: Array, audio_mask: Array) -> tuple[Array, Array]:
    """Parameter-free log-mels stacked to the frontend's frame rate (input for BEST-RQ)."""
    return self.frontend.stacked_log_mel(audio, audio_mask)

  def normalize_speech_features(self, features: Array) -> Array:
    """Frontend features [B, T, F] -> layer-normed [B, T, F] (the learned quantizer's input)."""
    return self.speech_projection.normalize(features)

  def project_speech(self, features: Array, deterministic: bool = True) -> Array:
    """Frontend features [B, T, F] -> [B, T, D]."""
    return self.speech_projection(features, deterministic)

  def mask_speech(self, x: Array, masked: Array) -> Array:
    """Replaces the frames where `masked` [B, T] is true by the learned mask embedding."""
    emb = jnp.asarray(self.speech_mask_embedding, x.dtype)
    return jnp.where(masked[..., None] != 0, emb, x)

  def speech_layers(self, x: Array, mask: Array, deterministic: bool = True) -> tuple[Array, Array]:
    """[B, T, D] -> (contrastive_out, speech_out): after contrastive_layer and after N blocks."""
    x = jnp.where(mask[..., None] != 0, x, 0.0)
    contrastive_out = self.speech_lower(x, mask, deterministic)
    speech_out = self.speech_upper(contrastive_out, mask, deterministic)
    return contrastive_out, speech_out

  def add_language(self, x: Array, lang: Array | None) -> Array:
    """[B, T, D] + each row's language vector (num_languages); unchanged without a table, without
    `lang` [B], or where it is negative (unknown)."""
    if self.num_languages <= 0 or lang is None:
      return x
    vectors = jnp.take(jnp.asarray(self.language_embedding, x.dtype), jnp.maximum(lang, 0), axis=0)
    return x + jnp.where((lang >= 0)[:, None], vectors, 0.0)[:, None, :]

  def shared_layers(self, x: Array, mask: Array, deterministic: bool = True, lang: Array | None = None) -> Array:
    """[B, T, D] -> [B, T, D] through the M shared blocks (speech, text or both concatenated);
    `lang` [B]: add_language first."""
    x = jnp.where(mask[..., None] != 0, self.add_language(x, lang), 0.0)
    return self.shared(x, mask, deterministic)

  def embed_text(self, tokens: Array, tokens_mask: Array, deterministic: bool = True) -> Array:
    """Tokens [B, L] -> [B, L, D]."""
    return self.text_embedding(tokens, tokens_mask, deterministic)

  def embed_phones(self, phone_ids: Array, phones_mask: Array, deterministic: bool = True) -> Array:
    """Phone ids [B, P] (mslam_jax.data.phones) -> [B, P, D]; needs phone_inputs."""
    if not self.phone_inputs:
      raise ValueError("phone inputs need MSLAMEncoder.phone_inputs = True")
    return self.phone_embedding(phone_ids, phones_mask, deterministic)

  def pool(self, x: Array, mask: Array) -> Array:
    """[B, T, D] -> [B, D]."""
    return self.pooler(x, mask)

  # ---- inference entry points ----

  def encode_speech(self, audio: Array, audio_mask: Array, deterministic: bool = True,
                    time_mask_prob: float = 0.0, time_mask_length: int = 10,
                    lang: Array | None = None) -> tuple[Array, Array, Array]:
    """Audio -> (frames [B, T, D], mask [B, T], pooled [B, D]) after the shared stack (`lang`: the
    clips' languages, where known; add_language).

    `time_mask_prob` > 0: SpecAugment's time masking as HF's `mask_time_prob` does it (about that
    share of the frames, in spans of `time_mask_length`, replaced by the mask embedding after the
    feature projection; the "masking" rng)."""
    features, mask = self.speech_frontend(audio, audio_mask, deterministic)
    x = self.project_speech(features, deterministic)
    if time_mask_prob > 0:
      masked = masking.start_prob_span_mask(self.make_rng("masking"), mask, time_mask_prob / time_mask_length,
                                            time_mask_length, min_spans=1)
      x = self.mask_speech(x, masked)
    _, x = self.speech_layers(x, mask, deterministic)
    x = self.shared_layers(x, mask, deterministic, lang)
    return x, mask, self.pool(x, mask)

  def speech_statistics(self, audio: Array, audio_mask: Array, deterministic: bool = True,
                        with_frames: bool = False) -> Array | tuple[Array, Array, Array]:
    """Audio -> [B, 6 D]: the mean and standard deviation over valid frames of each stage's output
    (projected features, speech stack, shared stack). Utterance-level traits such
    as the language sit in lower layers and in frame statistics as much as in the top layer's mean
    (x-vector statistics pooling; SUPERB's probes read every layer). `with_frames`: also the shared
    stack's frames [B, T, D] and mask [B, T] (encode_speech's), from the same pass."""
    features, mask = self.speech_frontend(audio, audio_mask, deterministic)
    projected = self.project_speech(features, deterministic)
    _, speech_out = self.speech_layers(projected, mask, deterministic)
    shared_out = self.shared_layers(speech_out, mask, deterministic)
    weight = (mask != 0).astype(jnp.float32)[..., None]
    count = jnp.maximum(weight.sum(axis=1), 1.0)
    stats = []
    for x in (projected, speech_out, shared_out):
      x = x.astype(jnp.float32)
      mean = (x * weight).sum(axis=1) / count
      var = (jnp.square(x - mean[:, None]) * weight).sum(axis=1) / count
      stats += [mean, jnp.sqrt(var + 1e-6)]
    if with_frames:
      return jnp.concatenate(stats, axis=-1), shared_out, mask
    return jnp.concatenate(stats, axis=-1)

  def encode_text(self, tokens: Array, tokens_mask: Array,
                  deterministic: bool = True) -> tuple[Array, Array, Array]:
    """Tokens -> (frames [B, L, D], mask [B, L], pooled [B, D]); text enters the shared stack."""
    x = self.embed_text(tokens, tokens_mask, deterministic)
    x = self.shared_layers(x, tokens_mask, deterministic)
    mask = tokens_mask.astype(jnp.int32)
    return x, mask, self.pool(x, mask)

  def __call__(self, audio: Array, audio_mask: Array, tokens: Array, tokens_mask: Array,
               deterministic: bool = True) -> dict[str, tuple[Array, Array, Array]]:
    """Both modalities (touches every parameter: use it to init the encoder on its own)."""
    return {"speech": self.encode_speech(audio, audio_mask, deterministic),
            "text": self.encode_text(tokens, tokens_mask, deterministic)}
