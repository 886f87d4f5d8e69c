"""MSLAMModel: the mSLAM network with every pre-training objective, behind a t5x-like interface.

One training step sees three sub-batches (the batch contract, mslam_jax/data/contract.py) and computes:

  speech  audio -> frontend features -> quantizer (unmasked; targets: ids and codevectors)
          projected features, w2v-BERT span-masked (learned mask embedding)
          -> speech layers up to `contrastive_layer` -> InfoNCE against the quantized targets
             (+ codebook diversity)
          -> remaining speech layers -> shared layers -> masked prediction of codebook ids
  text    span masking -> embedding -> shared layers -> span-masked LM over the vocabulary
          text CTC (beyond the paper; text injection): the same masked characters, each repeated
            `text_ctc_upsample` times to speech's frame rate -> shared layers -> the CTC head,
            against the whole text: every language's text trains the head that speech CTC uses
          consistency (beyond the paper; Maestro's): each pair's transcript laid out over its speech
            frames by the CTC head's forced alignment (every frame the character it says) ->
            embedding -> mean squared distance to the speech frames (stop-gradded), at the shared
            stack's input or output: the text path learns to look like speech to the shared layers
  paired  TLM: masked speech frames (after the speech-only layers) ++ masked transcript characters
            -> shared layers -> codebook ids of masked frames, characters of masked characters
          CTC: unmasked speech through the whole encoder -> character logits (mSLAM-CTC)
          cross-modal (beyond the paper): symmetric InfoNCE between pooled speech and pooled
            transcript encodings, each through its modality's embedding head, learned temperature;
            and, stretch by stretch, between the k-th stretch of a clip and the k-th of its
            transcript against every stretch of the batch (local_cross_modal)

Every objective has a weight in `ObjectiveWeights` and optionally a start and ramp in
`ObjectiveSchedule` (gin); every term and health figure (codebook perplexity and usage, masked
prediction and contrastive accuracy, frame and utterance cosine, CTC blank share) is in the metrics.

Interface (t5x-like; the optimizer lives outside):
  model = MSLAMModel()                          # everything from gin
  params = model.init(rng, batch)               # boxed (nn.LogicallyPartitioned) params
  loss, metrics = model.loss_fn(unboxed_params, batch, rng, step)
  frames, mask, pooled = model.encode_speech(params, audio, audio_mask)
  frames, mask, pooled = model.encode_text(params, tokens, tokens_mask)
  ... = model.embed_speech / embed_text(...)   # pooled -> the cross-modal (retrieval) space
  log_probs, mask, pooled = model.embed_speech_with_ctc(params, audio, audio_mask)   # + the CTC head's
  stats = model.speech_statistics(params, audio, audio_mask)   # language-ID features (encoder.py)
"""
import dataclasses
from typing import Any, Mapping, Optional

import flax
import flax.linen as nn
import gin
import jax
import jax.numpy as jnp

from mslam_jax import trainer as trainer_contract
from mslam_jax.layers import matmul
from mslam_jax.layers import quantizers as quantizers_lib
from mslam_jax.models import ctc_alignment
from mslam_jax.models import encoder as encoder_lib
from mslam_jax.models import heads
from mslam_jax.models import losses
from mslam_jax.models import masking

from mslam_jax.data import contract
from mslam_jax.data import languages
from mslam_jax.data.special_ids import BLANK_ID, MASK_ID

Array = jax.Array
Batch = Mapping[str, Mapping[str, Array]]

QUANTIZERS = ("gumbel", "best_rq")
# Metrics "objective/<field>" hold each objective's weighted share of the loss (they sum to it):
# what the trainer differentiates one by one for per-objective gradient norms.
OBJECTIVE_PREFIX = "objective/"
# The metric of each loss term -> its ObjectiveWeights field.
OBJECTIVE_OF_TERM = {
    "speech/contrastive_loss": "speech_contrastive", "speech/diversity_loss": "diversity",
    "speech/mlm_loss": "speech_mlm", "text/mlm_loss": "text_mlm", "paired/tlm_loss": "tlm",
    "paired/ctc_loss": "ctc", "paired/cross_modal_loss": "cross_modal",
    "paired/local_cross_modal_loss": "local_cross_modal", "text/ctc_loss": "text_ctc",
    "paired/consistency_loss": "consistency", "paired/phone_ctc_loss": "phone_ctc",
}
# rng streams the network draws from (besides "params" at init).
RNG_STREAMS = ("dropout", "masking", "negatives")
# Metrics "count/<name>" (trainer.COUNT_PREFIX): how many items (masked frames, characters, label
# tokens) a per-item objective averages over. A trainer that splits the batch into micro-batches
# sums them and hands the totals back as `normalizers` (MSLAMNetwork.__call__). The metrics each
# count normalizes (TLM's loss is the sum of two such terms; CTC's dropped utterances are a count):
COUNTED_METRICS = {
    "speech_contrastive": ("speech/contrastive_loss", "speech/contrastive_accuracy"),
    "speech_mlm": ("speech/mlm_loss", "speech/mlm_accuracy"),
    "text_mlm": ("text/mlm_loss", "text/mlm_accuracy"),
    "tlm_speech": ("paired/tlm_speech_loss", "paired/tlm_speech_accuracy", "paired/tlm_loss"),
    "tlm_text": ("paired/tlm_text_loss", "paired/tlm_text_accuracy", "paired/tlm_loss"),
    "ctc": ("paired/ctc_loss", "paired/ctc_infeasible"),
    "text_ctc": ("text/ctc_loss", "text/ctc_infeasible"),
    "consistency": ("paired/consistency_loss",),
    "phone_ctc": ("paired/phone_ctc_loss", "paired/phone_ctc_infeasible"),
}
CONSISTENCY_LAYERS = ("input", "output")
TEXT_CTC_INPUTS = ("characters", "phones")
# The stream each input of the shared stack comes from (its items' languages).
_STREAM_OF_SHARED_INPUT = {"speech": "speech", "text": "text", "text_ctc": "text", "tlm": "paired", "full": "paired",
                           "transcript": "paired"}


def _int(mask: Array) -> Array:
  return mask.astype(jnp.int32)


def _share(selected: Array, mask: Array) -> Array:
  return jnp.sum(selected) / jnp.maximum(jnp.sum(mask), 1)


def _grouped(fn, inputs: Mapping[str, tuple[Array, ...]], min_length_ratio: float = 1.0) -> dict[str, Any]:
  """fn(*arrays) for each entry of `inputs`, called once per group of entries whose arrays share
  shapes (but the leading batch axis) and dtypes: the group is concatenated along the batch and
  the outputs (any pytree of batch-major arrays) split back. Valid because every stage treats
  batch items independently (mask-aware layers, per-item norms). The arrays of an entry share
  their length (axis 1): samples and their mask, frames and theirs.

  With `min_length_ratio` < 1, entries that differ only in their length (axis 1 of every array)
  also share a call when each is at least that share of the group's longest: zero-padded to it
  (padding is masked out) and cut back after. Only for stages whose outputs keep their inputs'
  length on axis 1 and ignore masked positions (the Conformer stacks): one call fewer is one
  stack fewer to compile and a larger one to run, for the padded positions' compute.
  """
  groups: list[tuple[Any, int, list[str]]] = []  # (shapes past the length, longest length, names)
  # Longest first, so that each group starts at its longest entry; at 1.0 (equal lengths only) the
  # inputs' own order, which is the order of the calls.
  order = sorted(inputs, key=lambda n: -inputs[n][0].shape[1]) if min_length_ratio < 1.0 else list(inputs)
  for name in order:
    arrays = inputs[name]
    key, length = tuple((a.shape[2:], a.dtype) for a in arrays), arrays[0].shape[1]
    for group_key, longest, names in groups:
      if group_key == key and min_length_ratio * longest <= length <= longest:
        names.append(name)
        break
    else:
      groups.append((key, length, [name]))
  outputs = {}
  for _, longest, names in groups:
    if len(names) == 1:
      outputs[names[0]] = fn(*inputs[names[0]])
      continue
    pad = lambda a: jnp.pad(a, [(0, 0), (0, longest - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) if (
        a.shape[1] < longest) else a
    arrays = [jnp.concatenate([pad(a) for a in parts], axis=0) for parts in zip(*(inputs[n] for n in names))]
    merged = fn(*arrays)
    start = 0
    for name in names:
      size, length = inputs[name][0].shape[0], inputs[name][0].shape[1]
      cut = (lambda o, s=start, e=start + size: o[s:e]) if length == longest else (
          lambda o, s=start, e=start + size, t=length: o[s:e, :t])
      outputs[name] = jax.tree_util.tree_map(cut, merged)
      start += size
  return outputs


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ObjectiveWeights:
  """The weight of every objective in the total loss (0 switches an objective off).

  Paper figures: speech 1.0 (contrastive and masked prediction alike), diversity 0.1, text 0.3,
  paired 0.03 (unconfirmed), for TLM and CTC alike; the cross-modal losses are not in the paper.
  `local_cross_modal` matches stretches of a clip and its transcript (MSLAMModel.cross_modal_segments
  of them) against every stretch of the batch, its own neighbours included: where the utterance
  term can tell clips apart by a word or two, it must match what each stretch says.
  `text_ctc` (text injection) trains the CTC head on the text stream's masked, upsampled characters
  through the shared layers: a path from the text of languages without transcribed speech to the
  head that writes speech out.
  `consistency` pulls each pair's transcript, laid out over the clip's frames by the CTC head's
  forced alignment, toward the clip's speech frames (MSLAMModel.consistency_layer): text CTC's
  inputs then look like speech to the layers and head it trains. Needs `ctc` > 0. On the learning
  benchmark's seed-0 recipe (text CTC at 0.3) it did not help the held-out languages: zero-shot
  CER 0.346 at the input, 0.362 at the output, against 0.335 without it (benchmarks/README.md,
  thirty-first pass): off by default.
  `phone_ctc` trains the paired speech, where it enters the shared layers, to say its transcript's
  eSpeak phones through a CTC head tied to the phone embedding (MSLAMEncoder.phone_inputs): the
  speech frames of a phone are pulled toward the vector phone-level text injection
  (MSLAMModel.text_ctc_input = "phones") feeds the shared layers for it, so that what those layers
  learn to spell from text applies to speech. Needs the paired stream's phones
  (gin_configs/experiments/phone_ctc.gin). On the learning benchmark's seeds 0-2 at 0.3, beside
  character text CTC: the LM-fused zero-shot gain over the speech-only ablation 17.4 % (20.6 %,
  12.5 %, 19.0 %; 13.5 % without phone CTC on seeds 0-1), the greedy one 5.4 % against 8.3 %; at
  1.0 (seed 0) both fall; with phone-level injection instead of characters, seed 0's greedy gain
  fell to 1.1 % (benchmarks/README.md, thirty-second and thirty-third passes). Off by default.
  """
  speech_contrastive: float = 1.0
  diversity: float = 0.1
  speech_mlm: float = 1.0
  text_mlm: float = 0.3
  tlm: float = 0.03
  ctc: float = 0.03
  cross_modal: float = 0.0
  local_cross_modal: float = 0.0
  text_ctc: float = 0.0
  consistency: float = 0.0
  phone_ctc: float = 0.0

  def validate(self) -> None:
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not value >= 0.0:
        raise ValueError(f"ObjectiveWeights.{field.name} must be >= 0, got {value}")
    if sum(getattr(self, f.name) for f in dataclasses.fields(self)) <= 0.0:
      raise ValueError("every ObjectiveWeights.* is 0: nothing to train")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ObjectiveSchedule:
  """When each objective joins the loss: its weight times clip((step - start) / ramp, 0, 1).

  Objectives that need a non-collapsed encoder (CTC, the cross-modal term) can wait until the
  speech objectives have shaped it, then fade in; `ramp` 0 switches at `start`. Keys are
  ObjectiveWeights fields; an objective named nowhere has full weight from step 0.
  """
  start: Mapping[str, int] = dataclasses.field(default_factory=dict)
  ramp: Mapping[str, int] = dataclasses.field(default_factory=dict)

  def validate(self) -> None:
    names = {f.name for f in dataclasses.fields(ObjectiveWeights)}
    for table in ("start", "ramp"):
      for key, value in getattr(self, table).items():
        if key not in names:
          raise ValueError(f"ObjectiveSchedule.{table} names {key!r}, not an objective; choose from {sorted(names)}")
        if not int(value) >= 0:
          raise ValueError(f"ObjectiveSchedule.{table}[{key!r}] must be >= 0, got {value}")

  def factor(self, name: str, step: Array) -> Array:
    start, ramp = self.start.get(name, 0), self.ramp.get(name, 0)
    step = jnp.asarray(step, jnp.float32)
    if ramp <= 0:
      return (step >= start).astype(jnp.float32)
    return jnp.clip((step - start) / ramp, 0.0, 1.0)


def mean_pairwise_cosine(x: Array, mask: Array) -> Array:
  """Mean cosine between distinct valid rows of x [..., N, D] (mask [..., N]), averaged over the
  leading axes that have two or more valid rows. Near 1: the rows have collapsed onto one vector."""
  x = x.astype(jnp.float32)
  valid = mask.astype(jnp.float32)
  unit = x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12)) * valid[..., None]
  n = jnp.sum(valid, axis=-1)
  total = jnp.sum(jnp.square(jnp.sum(unit, axis=-2)), axis=-1)  # |sum u|^2 = n + sum_{i != j} u_i.u_j
  pairs = n * (n - 1)
  per_set = (total - n) / jnp.maximum(pairs, 1.0)
  has_pairs = (pairs > 0).astype(jnp.float32)
  return jnp.sum(per_set * has_pairs) / jnp.maximum(jnp.sum(has_pairs), 1.0)


def ctc_phonotactics(log_probs: Array, mask: Array, units: Array) -> Array:
  """A clip's expected unit frequencies and frame-to-next-frame co-occurrences under a CTC head:
  log_probs [B, T, V], mask [B, T], units [K] (vocabulary ids) -> [B, K + K * K], square-rooted.

  Phonotactic language-ID features (the posteriors' counterpart of PRLM's phone n-grams): which
  characters a clip sounds like and which follow which. Both are sums over valid frames divided by
  their number; only `units`' columns count (blank and rare characters would only add dimensions)."""
  valid = (mask != 0).astype(jnp.float32)
  q = jnp.take(jnp.exp(log_probs.astype(jnp.float32)), units, axis=-1) * valid[..., None]
  count = jnp.maximum(valid.sum(axis=1), 1.0)[:, None]
  unigram = q.sum(axis=1) / count
  bigram = jnp.einsum("btk,btl->bkl", q[:, :-1], q[:, 1:]).reshape(q.shape[0], -1) / count
  return jnp.sqrt(jnp.concatenate([unigram, bigram], axis=-1))


class MSLAMNetwork(nn.Module):
  """The Flax network behind MSLAMModel (see the module docstring). Built by MSLAMModel."""
  encoder: encoder_lib.MSLAMEncoder
  quantizer: nn.Module
  weights: ObjectiveWeights
  masks: masking.MaskingConfig
  schedule: ObjectiveSchedule = ObjectiveSchedule()
  quantize_log_mel: bool = False
  num_negatives: int = 100
  contrastive_temperature: float = 0.1
  contrastive_dim: int = 256
  tie_text_head: bool = False
  cross_modal_init_temperature: float = 0.07
  cross_modal_min_temperature: float = 0.01
  cross_modal_max_temperature: float = 1.0
  cross_modal_dim: int = 256
  cross_modal_hidden: int = 0
  cross_modal_frame_hidden: int = 0
  cross_modal_segments: int = 1
  tlm_items: Optional[int] = None
  stack_merge_ratio: float = 1.0
  text_ctc_upsample: int = 2
  consistency_layer: str = "input"
  language_dropout: float = 0.2
  text_ctc_input: str = "characters"
  text_ctc_lang_ids: tuple[int, ...] = ()

  def setup(self):
    enc, dtypes = self.encoder, dict(dtype=self.encoder.dtype, param_dtype=self.encoder.param_dtype)
    self.codebook_head = heads.CodebookPredictionHead(
        self.quantizer.num_groups, self.quantizer.num_entries, **dtypes, name="codebook_head")
    self.text_head = heads.TextLMHead(enc.vocab_size, tied=self.tie_text_head, **dtypes, name="text_head")
    self.ctc_head = heads.CTCHead(enc.vocab_size, **dtypes, name="ctc_head")
    if self.weights.speech_contrastive > 0:
      self.context_projection = heads.ContrastiveProjection(self.contrastive_dim, **dtypes,
                                                            name="context_projection")
      self.target_projection = heads.ContrastiveProjection(self.contrastive_dim, **dtypes,
                                                           name="target_projection")
    if self.weights.cross_modal > 0:
      sizes = dict(features=self.cross_modal_dim, hidden=self.cross_modal_hidden,
                   frame_hidden=self.cross_modal_frame_hidden, segments=self.cross_modal_segments,
                   local_features=self.cross_modal_dim if self.weights.local_cross_modal > 0 else 0)
      self.speech_embedding_head = heads.EmbeddingHead(**sizes, **dtypes, name="speech_embedding_head")
      self.text_embedding_head = heads.EmbeddingHead(**sizes, **dtypes, name="text_embedding_head")
      self.cross_modal_log_temperature = self._log_temperature("cross_modal_log_temperature")
    if self.weights.local_cross_modal > 0:
      self.local_cross_modal_log_temperature = self._log_temperature("local_cross_modal_log_temperature")

  def _log_temperature(self, name: str) -> Array:
    """A learned InfoNCE log-temperature (a scalar), starting at cross_modal_init_temperature."""
    return self.param(name, nn.with_logical_partitioning(
        nn.initializers.constant(jnp.log(self.cross_modal_init_temperature)), ()), (), jnp.float32)

  # ---- pieces ----

  def _text_ctc_mask(self, tokens_mask: Array) -> Array:
    """The characters text CTC masks: MaskingConfig.text_ctc_rate's share, or text_rate's."""
    mc = self.masks
    rate = mc.text_rate if mc.text_ctc_rate is None else mc.text_ctc_rate
    return masking.rate_span_mask(self.make_rng("masking"), tokens_mask, rate, mc.text_span_length, mc.min_spans)

  def _text_ctc_input(self, masked_tokens: Array, tokens_mask: Array, deterministic: bool,
                      phone_ids: bool = False) -> tuple[Array, Array]:
    """Masked characters (or phones) at speech's frame rate, embedded: each repeated
    text_ctc_upsample times before the embedding, so that every copy gets a position of its own,
    as speech frames do."""
    up = lambda x: jnp.repeat(x, self.text_ctc_upsample, axis=1)
    mask = up(tokens_mask)
    embed = self.encoder.embed_phones if phone_ids else self.encoder.embed_text
    return embed(up(masked_tokens), mask, deterministic), mask

  @staticmethod
  def _usable_phones(batch: Mapping[str, Array], stream: str) -> tuple[Array, Array]:
    """(phones, phones_mask) of a stream's items, the mask zero for items without phones (eSpeak
    has no voice for the language) and for those whose phones fill the whole length (cut)."""
    if "phones" not in batch:
      raise ValueError(f"the phone-level objectives need the {stream} stream's phones: set "
                       f"make_step_iterator.{stream}_phones_length and register the corpus with phones "
                       "(gin_configs/experiments/phone_injection.gin)")
    phone_ids, phones_mask = batch["phones"], _int(batch["phones_mask"])
    count = jnp.sum(phones_mask, axis=1)
    return phone_ids, phones_mask * ((count > 0) & (count < phones_mask.shape[1])).astype(jnp.int32)[:, None]

  def _text_ctc_phones(self, text: Mapping[str, Array], deterministic: bool) -> tuple[Array, Array]:
    """text_ctc_input "phones": the text stream's usable phones, span-masked, as _text_ctc_input
    embeds them (an item without gets no frames, so no loss)."""
    phone_ids, phones_mask = self._usable_phones(text, "text")
    masked = masking.apply_token_mask(phone_ids, self._text_ctc_mask(phones_mask), MASK_ID)
    return self._text_ctc_input(masked, phones_mask, deterministic, phone_ids=True)

  def _consistency(self, ctc_logits: Array, speech_in: Array, speech_out: Array, mask: Array, tokens: Array,
                   tokens_mask: Array, lang: Array, deterministic: bool, denominator) -> Array:
    """ObjectiveWeights.consistency: the transcript, each character held for the frames the CTC
    head's forced alignment gives it, embedded (and through the shared stack for
    consistency_layer "output") against the speech frames there, which are targets only."""
    states = ctc_alignment.viterbi_states(jax.lax.stop_gradient(ctc_logits), mask, tokens, tokens_mask, BLANK_ID)
    text = self.encoder.embed_text(ctc_alignment.held_characters(states, tokens), mask, deterministic)
    target = speech_in
    if self.consistency_layer == "output":
      text, target = self.encoder.shared_layers(text, mask, deterministic, lang), speech_out
    scored = mask * losses.ctc_feasible(mask, tokens, tokens_mask)[:, None]
    return losses.frame_mse(text, jax.lax.stop_gradient(target), scored,
                            denominator("consistency", jnp.sum(scored).astype(jnp.float32)))

  def _withhold_language(self, lang: Array, deterministic: bool) -> Array:
    """The items' language ids, each replaced by -1 (unknown) with probability language_dropout
    while training: the encoder must also work where the language is not given (language ID,
    retrieval)."""
    if deterministic or self.language_dropout <= 0:
      return lang
    keep = jax.random.bernoulli(self.make_rng("masking"), 1.0 - self.language_dropout, lang.shape)
    return jnp.where(keep, lang, -1)

  def _text_logits(self, x: Array) -> Array:
    if not self.tie_text_head:
      return self.text_head(x)
    table = self.encoder.variables["params"]["text_embedding"]["token_embedding"]["embedding"]
    return self.text_head(x, flax.core.meta.unbox(table))

  def _embedding(self, head: nn.Module, frames: Array, mask: Array, pooled: Optional[Array] = None,
                 with_local: bool = False):
    """Frames of one modality -> its cross-modal embedding (`pooled`: the encoder's, if at hand);
    `with_local`: (embedding, its stretches' embeddings [B, segments, D])."""
    if self.cross_modal_frame_hidden:
      return head(frames, mask, with_local=with_local)  # a layer on every frame, then the mean
    return head(self.encoder.pool(frames, mask) if pooled is None else pooled)

  def _quantize(self, audio: Array, audio_mask: Array, features: Array, mask: Array, step: Array,
                deterministic: bool) -> quantizers_lib.QuantizerOutput:
    if self.quantize_log_mel:
      features, _ = self.encoder.speech_quantizer_input(audio, audio_mask)
    else:
      features = self.encoder.normalize_speech_features(features)
    temperature = quantizers_lib.gumbel_temperature(step)
    return self.quantizer(features, mask, temperature, deterministic)

  def __call__(self, batch: Batch, step: Array, deterministic: bool = False,
               normalizers: Optional[Mapping[str, Array]] = None) -> tuple[Array, dict[str, Array]]:
    """(weighted total loss, metrics) of whichever streams `batch` holds.

    Runs in stages so that every Conformer stack runs once per group of same-shaped inputs
    (`_grouped`): the speech-only stack sees the masked speech stream, the masked paired speech
    (TLM) and the unmasked paired speech (CTC) in one batch when their lengths agree; the shared
    stack likewise. Fewer, larger calls: better accelerator use and a far smaller program.

    `normalizers`: when `batch` is one of "microbatches" micro-batches of a batch, the totals of
    the batch's "count/<name>" metrics. The loss and every metric are then this micro-batch's share
    of the whole batch's value, to be summed over the micro-batches: per-item objectives (and
    their accuracies) sum over the whole batch's items, exactly; batch-wide ones (codebook
    diversity, the cross-modal InfoNCE, whose negatives are the micro-batch's) and the health
    figures are the mean over micro-batches.
    """
    enc, w, mc = self.encoder, self.weights, self.masks
    counts: dict[str, Array] = {}

    def denominator(name: str, count: Array) -> Array:
      """This batch's count, or the whole batch's when `batch` is a micro-batch."""
      counts[name] = count
      return count if normalizers is None else jax.lax.stop_gradient(normalizers[name])

    speech, text, paired = batch.get("speech"), batch.get("text"), batch.get("paired")
    want_tlm = paired is not None and w.tlm > 0
    n = self.tlm_items  # TLM's pairs: the first n (slicing past the batch keeps it whole)
    want_full = paired is not None and (w.ctc > 0 or w.cross_modal > 0 or w.phone_ctc > 0)
    metrics: dict[str, Array] = {}

    # 1. Frontend features of the speech stream and of the paired speech.
    audio = {}
    if speech is not None:
      audio["speech"] = (speech["audio"], _int(speech["audio_mask"]))
    if want_tlm or want_full:
      audio["paired"] = (paired["audio"], _int(paired["audio_mask"]))
    feats = _grouped(lambda a, m: enc.speech_frontend(a, m, deterministic), audio)

    # 2. Quantized targets (unmasked features), masking, projection -> speech-only stack.
    lower_in = {}
    if speech is not None:
      features, mask = feats["speech"]
      speech_q = self._quantize(*audio["speech"], features, mask, step, deterministic)
      speech_masked = masking.start_prob_span_mask(
          self.make_rng("masking"), mask, mc.speech_start_prob, mc.speech_span_length, mc.min_spans)
      lower_in["speech"] = (enc.mask_speech(enc.project_speech(features, deterministic), speech_masked), mask)
    if want_tlm or want_full:
      features, paired_mask = feats["paired"]
      projected = enc.project_speech(features, deterministic)
      if want_tlm:
        tlm_mask = paired_mask[:n]
        paired_q = self._quantize(*(a[:n] for a in audio["paired"]), features[:n], tlm_mask, step, deterministic)
        frames_masked = masking.rate_span_mask(
            self.make_rng("masking"), tlm_mask, mc.tlm_speech_rate, mc.tlm_speech_span_length, mc.min_spans)
        lower_in["tlm"] = (enc.mask_speech(projected[:n], frames_masked), tlm_mask)
      if want_full:
        lower_in["full"] = (projected, paired_mask)
    lower_out = _grouped(lambda x, m: enc.speech_layers(x, m, deterministic), lower_in, self.stack_merge_ratio)

    # 3. Text inputs, then the shared stack.
    shared_in = {}
    if speech is not None:
      shared_in["speech"] = (lower_out["speech"][1], lower_in["speech"][1])
    if text is not None:
      tokens, tokens_mask = text["tokens"], _int(text["tokens_mask"])
      text_masked = masking.rate_span_mask(
          self.make_rng("masking"), tokens_mask, mc.text_rate, mc.text_span_length, mc.min_spans)
      masked_tokens = masking.apply_token_mask(tokens, text_masked, MASK_ID)
      shared_in["text"] = (enc.embed_text(masked_tokens, tokens_mask, deterministic), tokens_mask)
      if w.text_ctc > 0 and self.text_ctc_input == "phones":
        shared_in["text_ctc"] = self._text_ctc_phones(text, deterministic)
        text_ctc_mask = shared_in["text_ctc"][1]
        # An item without frames scores no characters.
        text_ctc_labels_mask = tokens_mask * (jnp.sum(text_ctc_mask, axis=1) > 0).astype(jnp.int32)[:, None]
      elif w.text_ctc > 0:
        if mc.text_ctc_rate is not None:
          masked_tokens = masking.apply_token_mask(tokens, self._text_ctc_mask(tokens_mask), MASK_ID)
        shared_in["text_ctc"] = self._text_ctc_input(masked_tokens, tokens_mask, deterministic)
        text_ctc_mask, text_ctc_labels_mask = shared_in["text_ctc"][1], tokens_mask
      if w.text_ctc > 0 and self.text_ctc_lang_ids:  # the other languages' rows score nothing
        kept = jnp.isin(text["lang"], jnp.asarray(self.text_ctc_lang_ids, text["lang"].dtype))
        text_ctc_labels_mask = text_ctc_labels_mask * kept.astype(text_ctc_labels_mask.dtype)[:, None]
    if paired is not None:
      paired_tokens, paired_tokens_mask = paired["tokens"], _int(paired["tokens_mask"])
    if want_tlm:
      tlm_tokens, tlm_tokens_mask = paired_tokens[:n], paired_tokens_mask[:n]
      chars_masked = masking.rate_span_mask(
          self.make_rng("masking"), tlm_tokens_mask, mc.tlm_text_rate, mc.tlm_text_span_length, mc.min_spans)
      chars = enc.embed_text(masking.apply_token_mask(tlm_tokens, chars_masked, MASK_ID), tlm_tokens_mask,
                             deterministic)
      frames = lower_out["tlm"][1]
      # Padding sits between the two parts; attention never sees it (joint mask).
      shared_in["tlm"] = (jnp.concatenate([frames, chars.astype(frames.dtype)], axis=1),
                          jnp.concatenate([tlm_mask, tlm_tokens_mask], axis=1))
    if want_full:
      shared_in["full"] = (lower_out["full"][1], paired_mask)
    if paired is not None and w.cross_modal > 0:
      shared_in["transcript"] = (enc.embed_text(paired_tokens, paired_tokens_mask, deterministic), paired_tokens_mask)
    if enc.num_languages > 0:  # each input of the shared stack gets its items' language vector
      langs = {name: self._withhold_language(batch[name]["lang"], deterministic)
               for name in ("speech", "text", "paired") if batch.get(name) is not None}
      for key, (x, m) in shared_in.items():
        lang = langs[_STREAM_OF_SHARED_INPUT[key]]
        shared_in[key] = (enc.add_language(x, lang[:x.shape[0]]), m)  # TLM reads the first pairs
    shared_out = _grouped(lambda x, m: enc.shared_layers(x, m, deterministic), shared_in, self.stack_merge_ratio)

    # 4. Heads and losses.
    if speech is not None:
      mask = lower_in["speech"][1]
      if w.speech_contrastive > 0:
        metrics["speech/contrastive_loss"], metrics["speech/contrastive_accuracy"] = losses.contrastive_loss(
            self.make_rng("negatives"), self.context_projection(lower_out["speech"][0]),
            self.target_projection(speech_q.quantized), speech_masked, num_negatives=self.num_negatives,
            temperature=self.contrastive_temperature, target_codes=speech_q.ids,
            denominator=denominator("speech_contrastive", losses.contrastive_count(speech_masked)))
      metrics["speech/mlm_loss"], metrics["speech/mlm_accuracy"] = losses.masked_cross_entropy(
          self.codebook_head(shared_out["speech"]), speech_q.ids, speech_masked,
          denominator("speech_mlm", losses.masked_count(speech_q.ids, speech_masked)))
      metrics["speech/diversity_loss"] = speech_q.diversity_loss
      metrics["speech/masked_share"] = _share(speech_masked, mask)
      metrics["codebook/perplexity"] = speech_q.perplexity
      metrics["codebook/code_perplexity"] = speech_q.code_perplexity
      metrics["codebook/usage"] = speech_q.usage
      # Collapse watch: frames of one utterance (near 1: every frame the same vector) and pooled
      # utterances of the batch (near 1: every clip the same vector).
      final = shared_out["speech"]
      metrics["health/frame_cosine"] = mean_pairwise_cosine(final, mask)
      metrics["health/utterance_cosine"] = mean_pairwise_cosine(
          enc.pool(final, mask)[None], (jnp.sum(mask, axis=-1) > 0)[None])
    if text is not None:
      metrics["text/mlm_loss"], metrics["text/mlm_accuracy"] = losses.masked_cross_entropy(
          self._text_logits(shared_out["text"]), tokens, text_masked,
          denominator("text_mlm", losses.masked_count(tokens, text_masked)))
      metrics["text/masked_share"] = _share(text_masked, tokens_mask)
      if w.text_ctc > 0:
        metrics["text/ctc_loss"], metrics["text/ctc_infeasible"] = losses.ctc_loss(
            self.ctc_head(shared_out["text_ctc"]), text_ctc_mask, tokens, text_ctc_labels_mask, blank_id=BLANK_ID,
            denominator=denominator("text_ctc", losses.ctc_count(text_ctc_mask, tokens, text_ctc_labels_mask)))
    if want_tlm:
      joint, num_frames = shared_out["tlm"], frames.shape[1]
      speech_loss, speech_acc = losses.masked_cross_entropy(
          self.codebook_head(joint[:, :num_frames]), paired_q.ids, frames_masked,
          denominator("tlm_speech", losses.masked_count(paired_q.ids, frames_masked)))
      text_loss, text_acc = losses.masked_cross_entropy(
          self._text_logits(joint[:, num_frames:]), tlm_tokens, chars_masked,
          denominator("tlm_text", losses.masked_count(tlm_tokens, chars_masked)))
      metrics.update({
          "paired/tlm_loss": speech_loss + text_loss,
          "paired/tlm_speech_loss": speech_loss, "paired/tlm_speech_accuracy": speech_acc,
          "paired/tlm_text_loss": text_loss, "paired/tlm_text_accuracy": text_acc,
          "paired/tlm_speech_masked_share": _share(frames_masked, tlm_mask),
          "paired/tlm_text_masked_share": _share(chars_masked, tlm_tokens_mask),
      })
    if want_full and w.ctc > 0:
      ctc_logits = self.ctc_head(shared_out["full"])
      metrics["paired/ctc_loss"], metrics["paired/ctc_infeasible"] = losses.ctc_loss(
          ctc_logits, paired_mask, paired_tokens, paired_tokens_mask, blank_id=BLANK_ID,
          denominator=denominator("ctc", losses.ctc_count(paired_mask, paired_tokens, paired_tokens_mask)))
      decodes_blank = ctc_logits[..., BLANK_ID] >= jnp.max(ctc_logits, axis=-1)  # argmax, ties to blank
      metrics["health/ctc_blank_share"] = _share(decodes_blank & (paired_mask != 0), paired_mask)
      if w.consistency > 0:
        metrics["paired/consistency_loss"] = self._consistency(
            ctc_logits, lower_out["full"][1], shared_out["full"], paired_mask, paired_tokens, paired_tokens_mask,
            paired["lang"], deterministic, denominator)
    if want_full and w.phone_ctc > 0:
      phone_ids, phones_mask = self._usable_phones(paired, "paired")
      phone_logits = enc.phone_embedding.attend(lower_out["full"][1])
      metrics["paired/phone_ctc_loss"], metrics["paired/phone_ctc_infeasible"] = losses.ctc_loss(
          phone_logits, paired_mask, phone_ids, phones_mask, blank_id=BLANK_ID,
          denominator=denominator("phone_ctc", losses.ctc_count(paired_mask, phone_ids, phones_mask)))
    if paired is not None and w.cross_modal > 0:
      valid = (jnp.sum(paired_mask, axis=-1) > 0) & (jnp.sum(paired_tokens_mask, axis=-1) > 0)
      clipped = lambda log_t: losses.clipped_temperature(
          log_t, self.cross_modal_min_temperature, self.cross_modal_max_temperature)
      local = w.local_cross_modal > 0
      speech_embedding = self._embedding(self.speech_embedding_head, shared_out["full"], paired_mask,
                                         with_local=local)
      text_embedding = self._embedding(self.text_embedding_head, shared_out["transcript"], paired_tokens_mask,
                                       with_local=local)
      if local:
        (speech_embedding, speech_local), (text_embedding, text_local) = speech_embedding, text_embedding
        temperature = clipped(self.local_cross_modal_log_temperature)
        flat = lambda x: x.reshape(-1, x.shape[-1])  # [B * segments, D]: every stretch is a candidate
        (metrics["paired/local_cross_modal_loss"],
         metrics["paired/local_cross_modal_accuracy"]) = losses.symmetric_infonce(
             flat(speech_local), flat(text_local), jnp.repeat(valid, self.cross_modal_segments), temperature)
        metrics["paired/local_cross_modal_temperature"] = temperature
      temperature = clipped(self.cross_modal_log_temperature)
      metrics["paired/cross_modal_loss"], metrics["paired/cross_modal_accuracy"] = losses.symmetric_infonce(
          speech_embedding, text_embedding, valid, temperature)
      metrics["paired/cross_modal_temperature"] = temperature

    # A micro-batch's share of what is not summed over the whole batch's items: 1/microbatches.
    summed = {key for name in counts for key in COUNTED_METRICS[name]}
    share = 1.0 if normalizers is None else 1.0 / normalizers["microbatches"]
    terms = {name: getattr(w, objective) for name, objective in OBJECTIVE_OF_TERM.items()}
    loss = jnp.zeros((), jnp.float32)
    for name, weight in terms.items():
      if weight > 0 and name in metrics:
        objective = OBJECTIVE_OF_TERM[name]
        if objective in self.schedule.start or objective in self.schedule.ramp:
          weight = weight * self.schedule.factor(objective, step)
          metrics[f"weight/{objective}"] = weight
        term = metrics[name].astype(jnp.float32) * (1.0 if name in summed else share)
        metrics[f"{OBJECTIVE_PREFIX}{objective}"] = weight * term
        loss = loss + metrics[f"{OBJECTIVE_PREFIX}{objective}"]
    if not self.quantize_log_mel:
      metrics["codebook/gumbel_temperature"] = quantizers_lib.gumbel_temperature(step)
    if normalizers is not None:
      metrics = {k: v if k in summed or k.startswith(OBJECTIVE_PREFIX) else v * share for k, v in metrics.items()}
    metrics["loss"] = loss
    metrics.update({f"{trainer_contract.COUNT_PREFIX}{name}": count for name, count in counts.items()})
    return loss, {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}

  def init_params(self, batch: Batch) -> None:
    """Touches every parameter once at the cost of one speech and one text pass (cheaper to
    compile than the full objective graph); creates what __call__ uses, nothing more."""
    enc = self.encoder
    speech = batch.get("speech") or batch["paired"]
    text = batch.get("text") or batch["paired"]
    outputs = enc(speech["audio"], _int(speech["audio_mask"]), text["tokens"], _int(text["tokens_mask"]))
    frames = outputs["speech"][0]
    features, mask = enc.speech_frontend(speech["audio"], _int(speech["audio_mask"]))
    quantized = self._quantize(speech["audio"], _int(speech["audio_mask"]), features, mask,
                               jnp.zeros((), jnp.int32), True)
    self.codebook_head(frames)
    self._text_logits(outputs["text"][0])
    self.ctc_head(frames)
    if enc.phone_inputs:
      enc.embed_phones(jnp.zeros_like(text["tokens"]), _int(text["tokens_mask"]))
    if self.weights.speech_contrastive > 0:
      self.context_projection(frames)
      self.target_projection(quantized.quantized)
    if self.weights.cross_modal > 0:
      local = self.weights.local_cross_modal > 0
      self._embedding(self.speech_embedding_head, *outputs["speech"], with_local=local)
      self._embedding(self.text_embedding_head, *outputs["text"], with_local=local)

  # ---- inference ----

  def encode_speech(self, audio: Array, audio_mask: Array, lang: Optional[Array] = None):
    return self.encoder.encode_speech(audio, audio_mask, True, lang=lang)

  def encode_text(self, tokens: Array, tokens_mask: Array):
    return self.encoder.encode_text(tokens, tokens_mask, True)

  def encode_text_for_ctc(self, tokens: Array, tokens_mask: Array, lang: Optional[Array] = None):
    """The text CTC objective's input through the shared stack: span-masked as text MLM masks,
    upsampled (_text_ctc_input)."""
    x, mask = self._text_ctc_input(masking.apply_token_mask(tokens, self._text_ctc_mask(tokens_mask), MASK_ID),
                                   tokens_mask, True)
    return self.encoder.shared_layers(x, mask, True, lang), mask

  def encode_speech_for_training(self, audio: Array, audio_mask: Array, time_mask_prob: float,
                                 time_mask_length: int, lang: Optional[Array] = None):
    """encode_speech as fine-tuning trains it: dropout as configured, and time masking
    (MSLAMEncoder.encode_speech)."""
    return self.encoder.encode_speech(audio, audio_mask, False, time_mask_prob, time_mask_length, lang)

  def speech_statistics(self, audio: Array, audio_mask: Array):
    return self.encoder.speech_statistics(audio, audio_mask, True)

  def speech_statistics_and_phonotactics(self, audio: Array, audio_mask: Array, units: Array):
    stats, frames, mask = self.encoder.speech_statistics(audio, audio_mask, True, with_frames=True)
    log_probs = jax.nn.log_softmax(self.ctc_head(frames).astype(jnp.float32), axis=-1)
    return jnp.concatenate([stats, ctc_phonotactics(log_probs, mask, units)], axis=-1)

  def embed_speech_with_ctc(self, audio: Array, audio_mask: Array):
    frames, mask, pooled = self.embed_speech(audio, audio_mask)
    return jax.nn.log_softmax(self.ctc_head(frames).astype(jnp.float32), axis=-1), mask, pooled

  def embed_speech(self, audio: Array, audio_mask: Array):
    frames, mask, pooled = self.encoder.encode_speech(audio, audio_mask, True)
    if self.weights.cross_modal > 0:
      return frames, mask, self._embedding(self.speech_embedding_head, frames, mask, pooled)
    return frames, mask, pooled

  def embed_text(self, tokens: Array, tokens_mask: Array):
    frames, mask, pooled = self.encoder.encode_text(tokens, tokens_mask, True)
    if self.weights.cross_modal > 0:
      return frames, mask, self._embedding(self.text_embedding_head, frames, mask, pooled)
    return frames, mask, pooled


@gin.configurable
class MSLAMModel:
  """The mSLAM pre-training model (t5x's BaseModel shape). Every argument can come from gin.

  Args:
    encoder: the MSLAMEncoder (default: `MSLAMEncoder()` as gin configures it).
    quantizer: "gumbel" (w2v-BERT; GumbelVectorQuantizer's gin bindings) or "best_rq"
      (RandomProjectionQuantizer's; quantizes the stacked log-mels, parameter-free).
    weights / masks: ObjectiveWeights / MaskingConfig (gin-configured when not given).
    num_negatives / contrastive_temperature / contrastive_dim: InfoNCE settings (100, 0.1, and the
      dimension both sides are projected to).
    tie_text_head: the text LM head reuses the token embedding table (scaled by 1/sqrt(D));
      separate by default (4M parameters at 1024 x 4096, and a cross-entropy at init of log V).
    cross_modal_*_temperature: the learned temperature's start and clipping range.
    cross_modal_dim / cross_modal_hidden / cross_modal_frame_hidden: the embedding heads of the
      cross-modal loss (one per modality, heads.EmbeddingHead): output size, the size of a GELU
      hidden layer on the pooled vector (0: linear, as CLIP), and of a GELU layer on every frame
      before a masked mean (0: the encoder's pooled vector; > 0 needs MSLAMEncoder.pooling = "mean").
    cross_modal_segments: with `cross_modal_frame_hidden`, the frame heads pool `segments` stretches
      of each utterance in order (pooling.segment_means) and project them together, instead of
      one mean: the embedding then says what comes first and what last, which a bag of frames
      cannot (a list of names and the same names in another order; two lists that share a name).
      ObjectiveWeights.local_cross_modal > 0 also matches those stretches one by one.
    tlm_items: TLM reads the first `tlm_items` items of the paired batch (None: all of them), CTC
      and the cross-modal term all of them. TLM's speech-and-text sequence is the step's longest
      and needs its own masked pass of the speech-only stack: at the demo's sizes TLM on every
      item is half of the step's time.
    stack_merge_ratio: inputs of a Conformer stack (speech crops, paired speech, text, TLM rows)
      share one call when their lengths are at least this share of the longest of the call,
      padded to it; 1.0: only equal lengths. Fewer calls compile faster and run larger matmuls,
      for the padding's compute; the losses are the same up to float rounding.
    text_ctc_upsample: how many CTC frames each character of ObjectiveWeights.text_ctc's input
      fills (>= 2: CTC needs a blank between doubled letters; speech gives ~1.7 frames a character
      at 40 ms frames and 15 characters a second).
    text_ctc_input: what ObjectiveWeights.text_ctc feeds the shared layers to write the text's
      characters from: "characters" (the text itself, masked: mostly a copy task) or "phones" (its
      eSpeak IPA, mslam_jax.data.phones: the shared layers learn how each language spells its
      sounds, from text alone; needs the text stream's phones and MSLAMEncoder.phone_inputs,
      gin_configs/experiments/phone_injection.gin). On the learning benchmark's seed-0 arm phones
      gave zero-shot CER 0.351 against 0.335 with characters (Swahili better, Afrikaans worse;
      benchmarks/README.md, thirty-second pass): "characters" stays the default.
    text_ctc_languages: ISO 639-3 codes of the languages whose text ObjectiveWeights.text_ctc
      scores (empty: every language's). Text injection where no transcribed speech exists
      (Maestro-U's setting): the languages with paired data already train the CTC head on speech.
      On the learning benchmark's seed-0 arm, the text of the three languages without paired
      training data alone, at text_ctc 0.3 / 0.1, gave zero-shot CER 0.345 / 0.368 against 0.338
      with every language's (benchmarks/README.md, forty-fourth pass): empty stays the default.
    consistency_layer: where ObjectiveWeights.consistency compares an aligned transcript with its
      speech: "input" (the text embedding against the speech-only stack's output, Maestro's
      place; no extra pass) or "output" (both through the shared stack: one more shared pass of
      the paired batch).
    language_dropout: with MSLAMEncoder.num_languages > 0, the share of each stream's items whose
      language is withheld in a training step (no vector added), so that the encoder also serves
      where the language is not given.
    schedule: ObjectiveSchedule, when each objective joins the loss (gin-configured when not given).
    dummy_audio_samples / dummy_text_length: shapes of `dummy_batch()` (init-time shapes only).
  """

  def __init__(
      self,
      encoder: Optional[encoder_lib.MSLAMEncoder] = None,
      quantizer: str = "gumbel",
      weights: Optional[ObjectiveWeights] = None,
      schedule: Optional[ObjectiveSchedule] = None,
      masks: Optional[masking.MaskingConfig] = None,
      num_negatives: int = 100,
      contrastive_temperature: float = 0.1,
      contrastive_dim: int = 256,
      tie_text_head: bool = False,
      cross_modal_init_temperature: float = 0.07,
      cross_modal_min_temperature: float = 0.01,
      cross_modal_max_temperature: float = 1.0,
      cross_modal_dim: int = 256,
      cross_modal_hidden: int = 0,
      cross_modal_frame_hidden: int = 0,
      cross_modal_segments: int = 1,
      tlm_items: Optional[int] = None,
      stack_merge_ratio: float = 1.0,
      text_ctc_upsample: int = 2,
      consistency_layer: str = "input",
      language_dropout: float = 0.2,
      text_ctc_input: str = "characters",
      text_ctc_languages: tuple[str, ...] = (),
      dummy_audio_samples: int = 16000,
      dummy_text_length: int = 16,
  ):
    if quantizer not in QUANTIZERS:
      raise ValueError(f"MSLAMModel.quantizer={quantizer!r}; choose one of {QUANTIZERS}")
    self.encoder = encoder if encoder is not None else encoder_lib.MSLAMEncoder()
    self.quantizer_name = quantizer
    quantizer_module = (quantizers_lib.GumbelVectorQuantizer(dtype=self.encoder.dtype,
                                                             param_dtype=self.encoder.param_dtype)
                        if quantizer == "gumbel" else quantizers_lib.RandomProjectionQuantizer())
    self.weights = weights if weights is not None else ObjectiveWeights()
    self.schedule = schedule if schedule is not None else ObjectiveSchedule()
    self.masks = masks if masks is not None else masking.MaskingConfig()
    self.dummy_audio_samples = dummy_audio_samples
    self.dummy_text_length = dummy_text_length
    try:
      text_ctc_lang_ids = tuple(languages.lang_id(code) for code in text_ctc_languages)
    except KeyError as e:
      raise ValueError(f"MSLAMModel.text_ctc_languages={list(text_ctc_languages)}: {e.args[0]}") from e
    self.network = MSLAMNetwork(
        encoder=self.encoder, quantizer=quantizer_module, weights=self.weights, schedule=self.schedule,
        masks=self.masks, cross_modal_dim=cross_modal_dim, cross_modal_hidden=cross_modal_hidden,
        cross_modal_frame_hidden=cross_modal_frame_hidden, cross_modal_segments=cross_modal_segments,
        quantize_log_mel=quantizer == "best_rq", num_negatives=num_negatives,
        contrastive_temperature=contrastive_temperature, contrastive_dim=contrastive_dim,
        tie_text_head=tie_text_head, cross_modal_init_temperature=cross_modal_init_temperature,
        cross_modal_min_temperature=cross_modal_min_temperature,
        cross_modal_max_temperature=cross_modal_max_temperature, tlm_items=tlm_items,
        stack_merge_ratio=stack_merge_ratio, text_ctc_upsample=text_ctc_upsample,
        consistency_layer=consistency_layer, language_dropout=language_dropout, text_ctc_input=text_ctc_input,
        text_ctc_lang_ids=text_ctc_lang_ids)
    self.validate()

  def validate(self) -> None:
    """Rejects impossible settings before anything is traced, naming the gin binding to fix."""
    enc, net, q = self.encoder, self.network, self.network.quantizer
    matmul.matmul_precision()  # an unknown precision names its binding here, not at trace time
    self.weights.validate()
    self.schedule.validate()
    self.masks.validate()
    for name in ("embed_dim", "num_shared_layers", "vocab_size"):
      if getattr(enc, name) <= 0:
        raise ValueError(f"MSLAMEncoder.{name} must be > 0, got {getattr(enc, name)}")
    if enc.num_speech_layers < 0:
      raise ValueError(f"MSLAMEncoder.num_speech_layers must be >= 0, got {enc.num_speech_layers}")
    if enc.contrastive_layer is not None and not 1 <= enc.contrastive_layer <= enc.num_speech_layers:
      raise ValueError(
          f"MSLAMEncoder.contrastive_layer={enc.contrastive_layer} lies outside the speech-only stack "
          f"[1, MSLAMEncoder.num_speech_layers={enc.num_speech_layers}] (None: its last layer)")
    if enc.vocab_size <= max(MASK_ID, BLANK_ID):
      raise ValueError(f"MSLAMEncoder.vocab_size={enc.vocab_size} must exceed the reserved ids "
                       f"(MASK={MASK_ID}, BLANK={BLANK_ID})")
    qname = type(q).__name__
    for name in ("num_groups", "num_entries"):
      if getattr(q, name) <= 0:
        raise ValueError(f"{qname}.{name} must be > 0, got {getattr(q, name)}")
    if self.quantizer_name == "gumbel" and q.codevector_dim % q.num_groups:
      raise ValueError(f"GumbelVectorQuantizer.codevector_dim={q.codevector_dim} is not divisible by "
                       f"GumbelVectorQuantizer.num_groups={q.num_groups}")
    if self.quantizer_name == "best_rq" and (self.weights.speech_contrastive > 0 or self.weights.diversity > 0):
      raise ValueError("MSLAMModel.quantizer='best_rq' has no learned codevectors: set "
                       "ObjectiveWeights.speech_contrastive = 0.0 and ObjectiveWeights.diversity = 0.0")
    if net.tlm_items is not None and net.tlm_items < 1:
      raise ValueError(f"MSLAMModel.tlm_items must be >= 1 (None: every paired item), got {net.tlm_items}")
    if net.text_ctc_upsample < 2:
      raise ValueError(f"MSLAMModel.text_ctc_upsample={net.text_ctc_upsample} must be >= 2: CTC needs a blank "
                       "between doubled letters")
    if net.text_ctc_input not in TEXT_CTC_INPUTS:
      raise ValueError(f"MSLAMModel.text_ctc_input={net.text_ctc_input!r}; choose one of {TEXT_CTC_INPUTS}")
    if net.text_ctc_input == "phones" and not enc.phone_inputs:
      raise ValueError("MSLAMModel.text_ctc_input = 'phones' needs MSLAMEncoder.phone_inputs = True "
                       "(gin_configs/experiments/phone_injection.gin binds both)")
    if self.weights.phone_ctc > 0 and not enc.phone_inputs:
      raise ValueError("ObjectiveWeights.phone_ctc > 0 needs MSLAMEncoder.phone_inputs = True (its head is "
                       "the phone embedding)")
    if not 0.0 <= net.language_dropout < 1.0:
      raise ValueError(f"MSLAMModel.language_dropout must be in [0, 1), got {net.language_dropout}")
    if enc.num_languages < 0:
      raise ValueError(f"MSLAMEncoder.num_languages must be >= 0 (0: no language vectors), got {enc.num_languages}")
    # A language id past the table would read NaN vectors (jnp.take fills out-of-range rows).
    if 0 < enc.num_languages < len(languages.all_languages()):
      raise ValueError(f"MSLAMEncoder.num_languages={enc.num_languages} is below the language registry's "
                       f"{len(languages.all_languages())} ids: set it to at least that (e.g. 512)")
    if net.consistency_layer not in CONSISTENCY_LAYERS:
      raise ValueError(f"MSLAMModel.consistency_layer={net.consistency_layer!r}; choose one of {CONSISTENCY_LAYERS}")
    if self.weights.consistency > 0 and not self.weights.ctc > 0:
      raise ValueError(f"ObjectiveWeights.consistency={self.weights.consistency} aligns each pair with the CTC "
                       "head: it needs ObjectiveWeights.ctc > 0 (or set consistency = 0.0)")
    if not 0 < net.stack_merge_ratio <= 1:
      raise ValueError(f"MSLAMModel.stack_merge_ratio must be in (0, 1], got {net.stack_merge_ratio}")
    if net.num_negatives < 1:
      raise ValueError(f"MSLAMModel.num_negatives must be >= 1, got {net.num_negatives}")
    if net.contrastive_dim < 1:
      raise ValueError(f"MSLAMModel.contrastive_dim must be >= 1, got {net.contrastive_dim}")
    if not net.contrastive_temperature > 0:
      raise ValueError(f"MSLAMModel.contrastive_temperature must be > 0, got {net.contrastive_temperature}")
    if not 0 < net.cross_modal_min_temperature <= net.cross_modal_init_temperature <= net.cross_modal_max_temperature:
      raise ValueError(
          "need 0 < MSLAMModel.cross_modal_min_temperature <= cross_modal_init_temperature <= "
          f"cross_modal_max_temperature, got {net.cross_modal_min_temperature}, "
          f"{net.cross_modal_init_temperature}, {net.cross_modal_max_temperature}")
    if net.cross_modal_hidden < 0 or net.cross_modal_frame_hidden < 0:
      raise ValueError("MSLAMModel.cross_modal_hidden and cross_modal_frame_hidden must be >= 0 (0: no such layer), "
                       f"got {net.cross_modal_hidden} and {net.cross_modal_frame_hidden}")
    if net.cross_modal_segments < 1 or (net.cross_modal_segments > 1 and not net.cross_modal_frame_hidden):
      raise ValueError(f"MSLAMModel.cross_modal_segments={net.cross_modal_segments}: must be >= 1, and above 1 it "
                       "pools the frame heads' frames, so it needs MSLAMModel.cross_modal_frame_hidden > 0")
    if self.weights.local_cross_modal > 0 and not (
        self.weights.cross_modal > 0 and net.cross_modal_frame_hidden and net.cross_modal_segments > 1):
      raise ValueError(
          f"ObjectiveWeights.local_cross_modal={self.weights.local_cross_modal} matches the stretches of the "
          "cross-modal frame heads: it needs ObjectiveWeights.cross_modal > 0, MSLAMModel.cross_modal_frame_hidden "
          f"> 0 and MSLAMModel.cross_modal_segments > 1 (got {self.weights.cross_modal}, "
          f"{net.cross_modal_frame_hidden}, {net.cross_modal_segments})")
    if net.cross_modal_frame_hidden and enc.pooling != "mean":
      raise ValueError(f"MSLAMModel.cross_modal_frame_hidden={net.cross_modal_frame_hidden} pools its frames by "
                       f"their mean: set MSLAMEncoder.pooling = 'mean' (got {enc.pooling!r}) or "
                       "cross_modal_frame_hidden = 0")

  # ---- t5x-like interface ----

  def _rngs(self, rng: Array, with_params: bool) -> dict[str, Array]:
    names = (("params",) if with_params else ()) + RNG_STREAMS
    return dict(zip(names, jax.random.split(rng, len(names))))

  def init(self, rng: Array, batch: Batch) -> Any:
    """Boxed parameters (nn.LogicallyPartitioned leaves) for batches shaped like `batch`."""
    # A speech-only or text-only run still gets the whole parameter tree (the same as a joint
    # run's): the modality it lacks comes from dummy_batch.
    missing = [m for m in ("speech", "text") if m not in batch and "paired" not in batch]
    if missing:
      dummy = self.dummy_batch()
      batch = dict(batch, **{m: dummy[m] for m in missing})
    # Jitted: op-by-op initialisation of a Conformer stack is minutes on CPU, one compile is seconds.
    init = jax.jit(lambda rngs, batch: self.network.init(rngs, batch, method=MSLAMNetwork.init_params)["params"])
    return init(self._rngs(rng, True), batch)

  def loss_fn(self, params: Any, batch: Batch, rng: Array, step: Any = 0,
              deterministic: bool = False, normalizers: Optional[Mapping[str, Array]] = None
              ) -> tuple[Array, dict[str, Array]]:
    """(weighted total loss, flat dict of every loss term and health figure); params unboxed.

    `deterministic=True` turns dropout and Gumbel noise off (evaluation); masking stays random.
    `normalizers`: for one micro-batch of a batch (MSLAMNetwork.__call__).
    """
    return self.network.apply({"params": params}, batch, jnp.asarray(step, jnp.int32),
                              deterministic=deterministic, normalizers=normalizers, rngs=self._rngs(rng, False))

  def encode_speech(self, params: Any, audio: Array, audio_mask: Array, lang: Optional[Array] = None
                    ) -> tuple[Array, Array, Array]:
    """(frames [B, T, D], mask [B, T], pooled [B, D]) of the full encoder, no masking, no dropout.
    `lang` [B]: the clips' language ids where known (MSLAMEncoder.num_languages)."""
    return self.network.apply({"params": flax.core.meta.unbox(params)}, audio, audio_mask, lang,
                              method=MSLAMNetwork.encode_speech)

  def encode_speech_for_training(self, params: Any, audio: Array, audio_mask: Array, rng: Array,
                                 time_mask_prob: float = 0.0, time_mask_length: int = 10,
                                 lang: Optional[Array] = None) -> tuple[Array, Array, Array]:
    """encode_speech with fine-tuning's noise: dropout (the model's rate) and time masking
    (MSLAMNetwork.encode_speech_for_training)."""
    return self.network.apply({"params": flax.core.meta.unbox(params)}, audio, audio_mask, time_mask_prob,
                              time_mask_length, lang, method=MSLAMNetwork.encode_speech_for_training,
                              rngs=self._rngs(rng, False))

  def encode_text(self, params: Any, tokens: Array, tokens_mask: Array) -> tuple[Array, Array, Array]:
    """(frames [B, L, D], mask [B, L], pooled [B, D]) of text through the shared stack."""
    return self.network.apply({"params": flax.core.meta.unbox(params)}, tokens, tokens_mask,
                              method=MSLAMNetwork.encode_text)

  def encode_text_for_ctc(self, params: Any, tokens: Array, tokens_mask: Array, rng: Array,
                          lang: Optional[Array] = None) -> tuple[Array, Array]:
    """(frames [B, k L, D], mask [B, k L]): text as ObjectiveWeights.text_ctc feeds the CTC head,
    masked and upsampled k = text_ctc_upsample times (fine-tuning's text injection reads it too)."""
    return self.network.apply({"params": flax.core.meta.unbox(params)}, tokens, _int(tokens_mask), lang,
                              method=MSLAMNetwork.encode_text_for_ctc, rngs=self._rngs(rng, False))

  def speech_statistics(self, params: Any, audio: Array, audio_mask: Array) -> Array:
    """[B, 6 D] per-stage frame statistics of the encoder (language-ID features; encoder.py)."""
    return self.network.apply({"params": flax.core.meta.unbox(params)}, audio, audio_mask,
                              method=MSLAMNetwork.speech_statistics)

  def speech_statistics_and_phonotactics(self, params: Any, audio: Array, audio_mask: Array, units: Array
                                         ) -> Array:
    """[B, 6 D + K + K^2]: speech_statistics and, from the same pass, the pre-trained CTC head's
    `ctc_phonotactics` over the vocabulary ids `units` [K] (language-ID features; needs has_ctc_head)."""
    return self.network.apply({"params": flax.core.meta.unbox(params)}, audio, audio_mask, units,
                              method=MSLAMNetwork.speech_statistics_and_phonotactics)

  @property
  def has_language_vectors(self) -> bool:
    """Whether the encoder reads each item's language (MSLAMEncoder.num_languages): fine-tuning and
    decoding then pass it (`lang`) to encode_speech and encode_text_for_ctc."""
    return self.encoder.num_languages > 0

  @property
  def has_ctc_head(self) -> bool:
    """Whether pre-training trains the CTC head (mSLAM-CTC): `embed_speech_with_ctc` means something."""
    return self.weights.ctc > 0

  def embed_speech_with_ctc(self, params: Any, audio: Array, audio_mask: Array) -> tuple[Array, Array, Array]:
    """(log-probabilities [B, T, vocab] of the pre-trained CTC head, mask [B, T], embed_speech's
    pooled vector) from one pass of the encoder; no masking, no dropout."""
    return self.network.apply({"params": flax.core.meta.unbox(params)}, audio, audio_mask,
                              method=MSLAMNetwork.embed_speech_with_ctc)

  def embed_speech(self, params: Any, audio: Array, audio_mask: Array) -> tuple[Array, Array, Array]:
    """encode_speech with the pooled vector mapped into the cross-modal space (retrieval), when the
    model has that objective; else encode_speech."""
    return self.network.apply({"params": flax.core.meta.unbox(params)}, audio, audio_mask,
                              method=MSLAMNetwork.embed_speech)

  def embed_text(self, params: Any, tokens: Array, tokens_mask: Array) -> tuple[Array, Array, Array]:
    """encode_text's counterpart of embed_speech."""
    return self.network.apply({"params": flax.core.meta.unbox(params)}, tokens, tokens_mask,
                              method=MSLAMNetwork.embed_text)

  def dummy_batch(self, batch_size: int = 1, audio_samples: Optional[int] = None,
                  text_length: Optional[int] = None) -> dict[str, dict[str, Array]]:
    """A batch of the contract's structure (data/contract.py), every item valid, for init and
    eval_shape; its tokens are an ordinary character id, not padding or a special token."""
    samples = audio_samples or self.dummy_audio_samples
    length = text_length or self.dummy_text_length
    spec = contract.batch_spec({stream: (batch_size, contract.stream_lengths(stream, samples, length))
                                for stream in contract.STREAMS})
    batch = contract.zeros_batch(spec)
    for stream in batch.values():
      if "tokens" in stream:
        stream["tokens"][:] = MASK_ID + 2
    return jax.tree.map(jnp.asarray, batch)
