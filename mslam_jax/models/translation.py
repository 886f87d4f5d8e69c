"""TranslationModel: the mSLAM encoder + a Transformer decoder, for X -> English translation.

Batches hold one or both streams (fixed sizes; a stream left out is not trained):

    {"speech": {"audio": f32[Bs,S], "audio_mask": i32[Bs,S], "targets": i32[Bs,Lt],
                "targets_mask": i32[Bs,Lt], "lang": i32[Bs]},
     "text":   {"tokens": i32[Bt,L], "tokens_mask": i32[Bt,L], "targets": i32[Bt,Lt],
                "targets_mask": i32[Bt,Lt], "lang": i32[Bt]}}

`speech` is speech translation (audio through the whole encoder); `text` is text-to-text
translation through the shared layers (mSLAM's joint speech + text fine-tuning, the same decoder).
Targets end with EOS; masks are 1 on real tokens. The loss is teacher-forced cross-entropy with
label smoothing per target token, padding masked, each stream weighted (`stream_weights`).

Interface (MSLAMModel's, so trainer.Trainer runs it unchanged):
  params = model.init(rng, batch)                       # boxed; {"encoder": ..., "decoder": ...}
  loss, metrics = model.loss_fn(params, batch, rng, step)
  tokens = model.translate_speech(params, audio, audio_mask, beam_size=4)   # [B, L], best beam
  tokens = model.translate_text(params, tokens, tokens_mask)
The encoder's parameters sit where MSLAMModel keeps them (params["encoder"]), so a pre-training
checkpoint's encoder drops in: `with_encoder(params, pretrained["encoder"])`.
"""
import functools
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import optax

from mslam_jax.data.special_ids import EOS_ID, MASK_ID, PAD_ID
from mslam_jax.models import decoder as decoder_lib
from mslam_jax.models import encoder as encoder_lib
from mslam_jax.models import search

Array = jax.Array
Batch = Mapping[str, Mapping[str, Array]]
STREAMS = ("speech", "text")
OBJECTIVE_PREFIX = "objective/"
RNG_STREAMS = ("dropout",)


def smoothed_cross_entropy(logits: Array, targets: Array, mask: Array, label_smoothing: float
                           ) -> tuple[Array, Array, Array]:
  """(label-smoothed loss, plain NLL, token accuracy), each a mean over the tokens where mask is 1.

  The smoothed target puts 1 - a on the label and a / V on every class (optax.smooth_labels).
  """
  logits = logits.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(mask), 1.0)
  one_hot = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.float32)
  smoothed = optax.softmax_cross_entropy(logits, optax.smooth_labels(one_hot, label_smoothing))
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
  mean = lambda x: jnp.sum(x * mask) / count
  return mean(smoothed), mean(nll), mean(correct)


class TranslationNetwork(nn.Module):
  """The Flax network behind TranslationModel."""
  encoder: encoder_lib.MSLAMEncoder
  decoder: decoder_lib.TransformerDecoder

  def encode(self, stream: str, inputs: Mapping[str, Array], deterministic: bool = True) -> tuple[Array, Array]:
    if stream == "speech":
      frames, mask, _ = self.encoder.encode_speech(inputs["audio"], inputs["audio_mask"].astype(jnp.int32),
                                                   deterministic)
    else:
      frames, mask, _ = self.encoder.encode_text(inputs["tokens"], inputs["tokens_mask"].astype(jnp.int32),
                                                 deterministic)
    return frames, mask

  def decode(self, inputs: Array, frames: Array, mask: Array, deterministic: bool = True) -> Array:
    return self.decoder(inputs, frames, mask, deterministic)

  def __call__(self, stream: str, inputs: Mapping[str, Array], deterministic: bool = True) -> Array:
    """Teacher-forced logits [B, Lt, V] of one stream."""
    frames, mask = self.encode(stream, inputs, deterministic)
    return self.decode(decoder_lib.shift_right(inputs["targets"]), frames, mask, deterministic)

  def init_params(self, batch: Batch) -> None:
    """Touches every parameter: both encoder paths (as MSLAMModel's init does) and the decoder."""
    ref = batch.get("speech") or batch["text"]
    size = ref["targets"].shape[0]
    audio = batch["speech"]["audio"] if "speech" in batch else jnp.zeros((size, 16000), jnp.float32)
    tokens = batch["text"]["tokens"] if "text" in batch else jnp.full((size, 8), MASK_ID, jnp.int32)
    outputs = self.encoder(audio, jnp.ones(audio.shape, jnp.int32), tokens, jnp.ones(tokens.shape, jnp.int32))
    frames, mask, _ = outputs["speech"]
    self.decoder(decoder_lib.shift_right(ref["targets"]), frames, mask)


@gin.configurable
class TranslationModel:
  """Speech (and text) to English translation on the mSLAM encoder. Every argument can come from gin.

  Args:
    encoder: the MSLAMEncoder (default: as gin configures it, i.e. the pre-trained size).
    decoder: the TransformerDecoder (default: gin's; its vocab_size is forced to the encoder's).
    label_smoothing: mass spread uniformly over the vocabulary in the training targets.
    stream_weights: {"speech": w, "text": w}: each stream's weight in the loss (joint speech + text
      fine-tuning weighs text translation in; a stream absent from the batch counts nothing).
    max_decode_length / beam_size / length_penalty_alpha: generation defaults.
    dummy_*: shapes of `dummy_batch()` (init-time shapes only).
  """

  def __init__(self, encoder: Optional[encoder_lib.MSLAMEncoder] = None,
               decoder: Optional[decoder_lib.TransformerDecoder] = None,
               label_smoothing: float = 0.1, stream_weights: Optional[Mapping[str, float]] = None,
               max_decode_length: int = 64, beam_size: int = 4, length_penalty_alpha: float = 0.6,
               dummy_audio_samples: int = 16000, dummy_text_length: int = 32, dummy_target_length: int = 32):
    self.encoder = encoder if encoder is not None else encoder_lib.MSLAMEncoder()
    decoder = decoder if decoder is not None else decoder_lib.TransformerDecoder()
    self.decoder = decoder.clone(vocab_size=self.encoder.vocab_size)
    self.label_smoothing = label_smoothing
    self.stream_weights = {"speech": 1.0, "text": 1.0, **(stream_weights or {})}
    self.max_decode_length = max_decode_length
    self.beam_size = beam_size
    self.length_penalty_alpha = length_penalty_alpha
    self.dummy_audio_samples = dummy_audio_samples
    self.dummy_text_length = dummy_text_length
    self.dummy_target_length = dummy_target_length
    self.network = TranslationNetwork(encoder=self.encoder, decoder=self.decoder)
    self.validate()

  def validate(self) -> None:
    if not 0.0 <= self.label_smoothing < 1.0:
      raise ValueError(f"TranslationModel.label_smoothing must be in [0, 1), got {self.label_smoothing}")
    unknown = set(self.stream_weights) - set(STREAMS)
    if unknown:
      raise ValueError(f"TranslationModel.stream_weights names {sorted(unknown)}; streams are {STREAMS}")
    if any(not w >= 0 for w in self.stream_weights.values()):
      raise ValueError(f"TranslationModel.stream_weights must be >= 0, got {self.stream_weights}")
    for name in ("max_decode_length", "beam_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"TranslationModel.{name} must be >= 1, got {getattr(self, name)}")
    d = self.decoder
    for name in ("embed_dim", "num_layers", "num_heads", "mlp_dim"):
      if getattr(d, name) < 1:
        raise ValueError(f"TransformerDecoder.{name} must be >= 1, got {getattr(d, name)}")
    if d.embed_dim % d.num_heads:
      raise ValueError(f"TransformerDecoder.embed_dim={d.embed_dim} is not divisible by "
                       f"TransformerDecoder.num_heads={d.num_heads}")

  # ---- the Trainer's contract ----

  def _rngs(self, rng: Array, with_params: bool) -> dict[str, Array]:
    names = (("params",) if with_params else ()) + RNG_STREAMS
    return dict(zip(names, jax.random.split(rng, len(names))))

  def init(self, rng: Array, batch: Batch) -> Any:
    """Boxed parameters (nn.LogicallyPartitioned leaves) for batches shaped like `batch`."""
    init = jax.jit(lambda rngs, batch: self.network.init(rngs, batch, method=TranslationNetwork.init_params)["params"])
    return init(self._rngs(rng, True), batch)

  def loss_fn(self, params: Any, batch: Batch, rng: Array, step: Any = 0,
              deterministic: bool = False) -> tuple[Array, dict[str, Array]]:
    """(weighted label-smoothed loss, metrics): per stream `{stream}/loss` (smoothed), `/nll`,
    `/token_accuracy`, and `objective/{stream}_translation` (its weighted share of `loss`)."""
    del step  # no schedule: every stream trains from the first step
    metrics, loss = {}, jnp.zeros((), jnp.float32)
    rngs = self._rngs(rng, False)
    for stream in STREAMS:
      if stream not in batch:
        continue
      inputs = batch[stream]
      logits = self.network.apply({"params": params}, stream, inputs, deterministic, rngs=rngs)
      smoothed, nll, accuracy = smoothed_cross_entropy(logits, inputs["targets"], inputs["targets_mask"],
                                                       self.label_smoothing)
      metrics.update({f"{stream}/loss": smoothed, f"{stream}/nll": nll, f"{stream}/token_accuracy": accuracy})
      share = self.stream_weights[stream] * smoothed
      metrics[f"{OBJECTIVE_PREFIX}{stream}_translation"] = share
      loss = loss + share
    metrics["loss"] = loss
    return loss, metrics

  # ---- generation ----

  @functools.cached_property
  def _generate(self):
    @functools.partial(jax.jit, static_argnames=("stream", "beam_size", "max_length", "alpha"))
    def generate(params, inputs, stream, beam_size, max_length, alpha):
      network = self.network
      frames, mask = network.apply({"params": params}, stream, inputs, method=TranslationNetwork.encode)
      batch_size = frames.shape[0]
      if beam_size > 1:
        frames, mask = search.repeat_for_beams(frames, beam_size), search.repeat_for_beams(mask, beam_size)

      def logits_fn(tokens, t):
        logits = network.apply({"params": params}, tokens, frames, mask, method=TranslationNetwork.decode)
        return jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)

      if beam_size == 1:
        return search.greedy_search(logits_fn, batch_size, max_length, EOS_ID, decoder_lib.START_ID, PAD_ID)
      tokens, scores = search.beam_search(logits_fn, batch_size, beam_size, max_length, EOS_ID, alpha,
                                          decoder_lib.START_ID, PAD_ID)
      return tokens[:, 0], scores[:, 0]
    return generate

  def generate(self, params: Any, stream: str, inputs: Mapping[str, Array], beam_size: Optional[int] = None,
               max_length: Optional[int] = None, alpha: Optional[float] = None) -> tuple[Array, Array]:
    """(tokens [B, max_length] padded after EOS, score [B]) of the best hypothesis; beam_size 1 is
    greedy decoding. Defaults: the model's max_decode_length, beam_size, length_penalty_alpha."""
    if stream not in STREAMS:
      raise ValueError(f"stream must be one of {STREAMS}, got {stream!r}")
    keys = ("audio", "audio_mask") if stream == "speech" else ("tokens", "tokens_mask")
    return self._generate(
        flax.core.meta.unbox(params), {k: jnp.asarray(inputs[k]) for k in keys}, stream,
        int(beam_size or self.beam_size), int(max_length or self.max_decode_length),
        float(self.length_penalty_alpha if alpha is None else alpha))

  def translate_speech(self, params: Any, audio: Array, audio_mask: Array, **kwargs) -> Array:
    return self.generate(params, "speech", {"audio": audio, "audio_mask": audio_mask}, **kwargs)[0]

  def translate_text(self, params: Any, tokens: Array, tokens_mask: Array, **kwargs) -> Array:
    return self.generate(params, "text", {"tokens": tokens, "tokens_mask": tokens_mask}, **kwargs)[0]

  # ---- helpers ----

  def dummy_batch(self, batch_size: int = 1, streams: tuple[str, ...] = STREAMS) -> dict[str, dict[str, Array]]:
    """A zero batch of this model's structure (for init / eval_shape; all items valid)."""
    lang = jnp.zeros((batch_size,), jnp.int32)
    targets = jnp.full((batch_size, self.dummy_target_length), MASK_ID + 2, jnp.int32)
    out = {}
    if "speech" in streams:
      out["speech"] = {"audio": jnp.zeros((batch_size, self.dummy_audio_samples), jnp.float32),
                       "audio_mask": jnp.ones((batch_size, self.dummy_audio_samples), jnp.int32),
                       "targets": targets, "targets_mask": jnp.ones_like(targets), "lang": lang}
    if "text" in streams:
      tokens = jnp.full((batch_size, self.dummy_text_length), MASK_ID + 2, jnp.int32)
      out["text"] = {"tokens": tokens, "tokens_mask": jnp.ones_like(tokens), "targets": targets,
                     "targets_mask": jnp.ones_like(targets), "lang": lang}
    return out


def with_encoder(params: Any, encoder_params: Any) -> Any:
  """`params` with the encoder's replaced by `encoder_params` (e.g. a pre-training checkpoint's
  params["encoder"]); the structures must agree."""
  expected = jax.tree_util.tree_structure(flax.core.meta.unbox(params["encoder"]))
  got = jax.tree_util.tree_structure(flax.core.meta.unbox(encoder_params))
  if expected != got:
    raise ValueError("the encoder parameters do not match this TranslationModel's encoder: build it with "
                     "the pre-training run's encoder size (its gin config)")
  return {**params, "encoder": encoder_params}


def decode_tokens(vocabulary: Any, tokens: Any) -> list[str]:
  """Token rows (padded after EOS) -> strings, cut at the first EOS."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  out = []
  for row in np.asarray(tokens):
    ids = [int(i) for i in row]
    if EOS_ID in ids:
      ids = ids[:ids.index(EOS_ID)]
    out.append(vocabulary.decode([i for i in ids if i != PAD_ID]))
  return out
