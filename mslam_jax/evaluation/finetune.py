"""Downstream fine-tuning tasks: heads on a pre-trained encoder as models with the Trainer's contract.

A task model wraps the pre-trained model (`base`, the MSLAMModel contract: encode_speech) and adds a
head; like MSLAMModel it offers

  params = task.init(rng, batch)                 # {"encoder": base params, "head": ...}
  loss, metrics = task.loss_fn(params, batch, rng, step)

so that fine-tuning is a trainer.Trainer job like pre-training (evaluation/finetune_job.py runs
it). Tasks register by name (`register_task`): "ctc" (CTC ASR over the corpus' characters) and
"classify" (a linear head on the pooled speech embedding, e.g. language ID); a model registered as
"translate" (models/translation.py) is used for speech translation.

Freezing choices (`FinetuneConfig.freeze`), the same for every head:
  "frozen"  the encoder is fixed; only the head trains (the encoder output is stop-gradiented,
            so no backward pass runs through it).
  "top_k"   the top `top_k` layers of the encoder's top stack (the shared stack of mSLAM, found by
            the name `top_stack`) train with the head; everything below is fixed.
  "all"     every encoder parameter trains.
`finetune_optimizer` labels parameters by path for an `optax.multi_transform`: whole frozen leaves
get `optax.set_to_zero` (no Adam state); leaves of an nn.scan stack, where only some rows of the
stacked "layers" axis train, get their gradient multiplied by a 0/1 row mask (with Adam and no
weight decay a zero gradient is a zero update). The head learns at `learning_rate`, the encoder at
`encoder_learning_rate` (or `encoder_lr_multiplier` x `learning_rate`).
"""
import bisect
import dataclasses
import functools
import logging
import re
from typing import Any, Callable, Iterable, Iterator, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.core import meta

from mslam_jax import optimizers
from mslam_jax import storage
from mslam_jax.data import languages
from mslam_jax.data.special_ids import NUM_RESERVED
from mslam_jax.evaluation import asr
from mslam_jax.evaluation import data as eval_data
from mslam_jax.models import translation as translation_model

FREEZE_MODES = ("frozen", "top_k", "all")
_INFEASIBLE = 1e4  # optax.ctc_loss gives ~1e5 when the frames cannot hold the labels


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
  """How a head is fine-tuned (gin: FinetuneConfig.steps = 300, ...)."""
  freeze: str = "frozen"
  top_k: int = 1
  top_stack: str = "shared"
  steps: int = 300
  batch_size: int = 8
  learning_rate: float = 3e-3
  encoder_learning_rate: float = 3e-4
  # When set, the encoder's rate is this multiple of learning_rate (encoder_learning_rate ignored).
  encoder_lr_multiplier: float | None = None
  warmup_steps: int = 30
  clip_norm: float = 1.0
  max_audio_seconds: float = 20.0
  seed: int = 0
  checkpoint_every: int = 100
  # Start the CTC head from the pre-trained one under this top-level parameter name when there is
  # one (mSLAM-CTC pre-trains a CTC head on paired data); None: a fresh head. A head still on CTC's
  # all-blank plateau is a worse start than a fresh one.
  pretrained_head: str | None = "ctc_head"
  # Audio length buckets in seconds (every task): each batch draws its clips from one bucket and is
  # padded to its bound, not to the longest clip's; the step compiles once per bucket. (): every
  # batch padded to the longest training clip (at most max_audio_seconds).
  length_buckets: tuple[float, ...] = ()
  # SpecAugment's time masking while a CTC head trains (HF's mask_time_prob / mask_time_length):
  # about this share of the frames, in spans of time_mask_length, replaced by the pre-trained mask
  # embedding; also turns the model's dropout on. 0: the encoder runs as at inference. Not with
  # freeze="frozen" (a probe of fixed features).
  time_mask_prob: float = 0.0
  time_mask_length: int = 10
  # CTC steps per encoder frame: the head maps each frame to this many consecutive steps (a
  # [D, k, V] kernel). Character CTC needs a step per character and a blank between doubled letters:
  # at 40 ms frames the built-in corpus' ~15 characters a second fill 60 % of the steps (French 71 %).
  # 2 on the learning benchmark's checkpoint: CER 0.211 either way (French 0.34 -> 0.30, the others
  # a little worse; benchmarks/README.md, twelfth pass).
  ctc_upsample: int = 1
  # Text injection (CTC only): each step also trains the head on `text_batch_size` rows of the
  # corpus' train text of every language, the held-out ones included, masked and upsampled as the
  # pre-training's text CTC objective makes them (MSLAMModel.encode_text_for_ctc), at this weight
  # beside the speech loss. 0: speech alone. A path from a language's text to the head that writes
  # its speech out, for languages with text and no transcribed speech. On the learning benchmark's
  # seed-0 checkpoints, at 0.5, it did not help the held-out languages: zero-shot CER 0.353 -> 0.357
  # (the speech-only ablation's 0.369 -> 0.362), and 0.335 -> 0.371 where pre-training had trained
  # the same path (ObjectiveWeights.text_ctc; benchmarks/README.md, thirtieth pass).
  text_ctc: float = 0.0
  text_batch_size: int = 8
  # ISO 639-3 codes of the languages whose train text text_ctc reads (empty: every language's): text
  # only where no transcribed speech trains the head, as Maestro-U injects it. On the learning
  # benchmark's seed-0 joint checkpoint (forty-fourth pass), afr, swa and zul text at 0.5 gave
  # zero-shot CER 0.366 against 0.338 without text (benchmarks/README.md, forty-fifth pass).
  text_languages: tuple[str, ...] = ()

  def __post_init__(self):
    if self.freeze not in FREEZE_MODES:
      raise ValueError(f"FinetuneConfig.freeze={self.freeze!r}; choose one of {FREEZE_MODES}")
    if self.freeze == "top_k" and self.top_k < 1:
      raise ValueError("FinetuneConfig.top_k must be >= 1 with freeze='top_k'")
    if self.steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
      raise ValueError("FinetuneConfig.steps, batch_size and checkpoint_every must be >= 1")
    if not self.text_ctc >= 0.0 or self.text_batch_size < 1:
      raise ValueError(f"FinetuneConfig.text_ctc={self.text_ctc} must be >= 0 and text_batch_size="
                       f"{self.text_batch_size} >= 1")
    if self.ctc_upsample < 1:
      raise ValueError(f"FinetuneConfig.ctc_upsample={self.ctc_upsample} must be >= 1")
    if not 0.0 <= self.time_mask_prob < 1.0 or self.time_mask_length < 1:
      raise ValueError(f"FinetuneConfig.time_mask_prob={self.time_mask_prob} must be in [0, 1) and "
                       f"time_mask_length={self.time_mask_length} >= 1")
    buckets = tuple(float(b) for b in self.length_buckets)
    if any(b <= 0 for b in buckets) or list(buckets) != sorted(set(buckets)):
      raise ValueError(f"FinetuneConfig.length_buckets={self.length_buckets!r}: give increasing positive seconds")

  @property
  def encoder_rate(self) -> float:
    if self.encoder_lr_multiplier is not None:
      return self.encoder_lr_multiplier * self.learning_rate
    return self.encoder_learning_rate


SELF_TRAINING_POOLS = ("held_out", "all")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SelfTrainingConfig:
  """Self-training after a CTC head is fine-tuned (gin: SelfTrainingConfig.steps = 800 turns it on;
  finetune_job.self_training_metrics runs it).

  The head, as teacher, transcribes untranscribed speech (the corpus' speech stream, train split;
  its stored text is never trained on) by beam search fused with each clip's language's character
  LM; the student, a copy of the teacher, trains on for `steps` over the teacher's own training
  examples and those transcripts (`share` of the draws), at `learning_rate` for head and encoder.
  `pool`: whose speech is transcribed, the held-out languages' ("held_out": zero-shot ASR learns
  from their speech) or every language's ("all": the training languages' too).
  `max_per_lang`: at most this many clips a language (None: all). `rounds` > 1: each student is the
  next round's teacher, transcribing the same clips anew."""
  steps: int = 0
  rounds: int = 1
  learning_rate: float = 3e-3
  share: float = 0.5
  pool: str = "held_out"
  max_per_lang: int | None = None

  def __post_init__(self):
    if self.steps < 0 or self.rounds < 1 or not 0.0 < self.share < 1.0 or self.learning_rate <= 0:
      raise ValueError(f"SelfTrainingConfig: steps={self.steps} must be >= 0, rounds={self.rounds} >= 1, "
                       f"share={self.share} in (0, 1) and learning_rate={self.learning_rate} > 0")
    if self.pool not in SELF_TRAINING_POOLS:
      raise ValueError(f"SelfTrainingConfig.pool={self.pool!r}; choose one of {SELF_TRAINING_POOLS}")

  def student(self, teacher: FinetuneConfig) -> FinetuneConfig:
    """The student's fine-tuning settings: the teacher's, with this round's steps and rate."""
    return dataclasses.replace(teacher, steps=self.steps, learning_rate=self.learning_rate,
                               encoder_learning_rate=self.learning_rate, encoder_lr_multiplier=None)


# -- which parameters train ----------------------------------------------------------------------

def _keys(path) -> list[str]:
  return [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]


def gradient_masks(encoder_params: Any, config: FinetuneConfig) -> Any:
  """Per leaf: 0.0 (fixed), 1.0 (trained), or a 0/1 array broadcasting over a scanned layer axis."""
  if config.freeze == "all":
    return jax.tree.map(lambda _: 1.0, encoder_params)
  if config.freeze == "frozen":
    return jax.tree.map(lambda _: 0.0, encoder_params)
  flat, treedef = jax.tree_util.tree_flatten_with_path(encoder_params)
  pattern = re.compile(config.top_stack)
  stacks: dict[tuple[str, ...], set[int]] = {}  # stack path -> unrolled layer indices
  located = []
  for path, leaf in flat:
    keys = _keys(path)
    where = None
    for i, key in enumerate(keys[:-1]):
      if pattern.search(key) and (keys[i + 1] == "layers" or re.fullmatch(r"layers_\d+", keys[i + 1])):
        where = i
    located.append((keys, leaf, where))
    if where is not None and keys[where + 1] != "layers":
      stacks.setdefault(tuple(keys[:where + 1]), set()).add(int(keys[where + 1].split("_")[1]))
  if all(w is None for _, _, w in located):
    raise ValueError(f"FinetuneConfig.top_stack={config.top_stack!r} matches no layer stack "
                     "('layers' or 'layers_i' children) in the encoder parameters")
  masks = []
  for keys, leaf, where in located:
    if where is None:
      masks.append(0.0)
    elif keys[where + 1] == "layers":  # scanned: rows of the leading axis are layers
      n = np.shape(leaf)[0]
      rows = (np.arange(n) >= n - config.top_k).astype(np.float32)
      masks.append(rows.reshape((n,) + (1,) * (np.ndim(leaf) - 1)))
    else:
      n = len(stacks[tuple(keys[:where + 1])])
      masks.append(1.0 if int(keys[where + 1].split("_")[1]) >= n - config.top_k else 0.0)
  return jax.tree_util.tree_unflatten(treedef, masks)


def _is_frozen(mask) -> bool:
  return isinstance(mask, float) and mask == 0.0


def _labels(params: Any, config: FinetuneConfig) -> Any:
  """"head" / "encoder" / "frozen" per leaf of {"encoder": ..., "head": ..., ...}: everything
  outside "encoder" belongs to the task (a head, a decoder) and trains at the head's rate."""
  masks = gradient_masks(params["encoder"], config)
  return {k: (jax.tree.map(lambda m: "frozen" if _is_frozen(m) else "encoder", masks) if k == "encoder"
              else jax.tree.map(lambda _: "head", v)) for k, v in params.items()}


def _mask_rows(config: FinetuneConfig) -> optax.GradientTransformation:
  """Multiplies the encoder's gradient by gradient_masks (0/1 rows of scanned stacks)."""

  def update(updates, state, params=None):
    del params
    masks = gradient_masks(updates["encoder"], config)
    encoder = jax.tree.map(lambda g, m: g * jnp.asarray(m, g.dtype), updates["encoder"], masks)
    return {**updates, "encoder": encoder}, state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def finetune_optimizer(config: FinetuneConfig) -> optimizers.Optimizer:
  """Adam with warm-up + cosine decay, per parameter group by path (see the module docstring)."""
  def schedule(peak):
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(1, config.warmup_steps),
                                              max(config.steps, config.warmup_steps + 1), end_value=peak * 0.1)

  tx = optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      _mask_rows(config),
      optax.multi_transform({"head": optax.adam(schedule(config.learning_rate)),
                             "encoder": optax.adam(schedule(config.encoder_rate)),
                             "frozen": optax.set_to_zero()},
                            lambda params: _labels(params, config)))
  return optimizers.Optimizer(tx=tx, schedule=schedule(config.learning_rate), name="finetune_adam")


def count_trainable(encoder_params: Any, masks: Any) -> int:
  total = 0
  for leaf, mask in zip(jax.tree.leaves(encoder_params), jax.tree.leaves(masks)):
    total += int(np.sum(np.broadcast_to(np.asarray(mask), np.shape(leaf)) > 0))
  return total


# -- task models -----------------------------------------------------------------------------

TASKS: dict[str, Callable[..., Any]] = {}


def register_task(name: str):
  """Class decorator: the task model `mslam finetune --task name` builds."""
  def wrap(cls):
    TASKS[name] = cls
    return cls
  return wrap


def task_model(name: str) -> Callable[..., Any]:
  """The model class of a task (`register_task`; "translate" is models/translation.py's)."""
  if name not in TASKS:
    raise ValueError(f"unknown fine-tuning task {name!r}; known: {sorted(TASKS)}")
  return TASKS[name]


def head_task(task: str, base: Any, num_classes: int, settings: FinetuneConfig) -> Any:
  """The task model of a head task ("ctc", "classify") on `base`, as `settings` fine-tune it."""
  extra = {"upsample": settings.ctc_upsample, "text_weight": settings.text_ctc} if task == "ctc" else {}
  return task_model(task)(base, num_classes, freeze_encoder=settings.freeze == "frozen", seed=settings.seed,
                          time_mask_prob=settings.time_mask_prob, time_mask_length=settings.time_mask_length,
                          **extra)


def _init_base(base: Any, rng: jax.Array) -> Any:
  dummy = base.dummy_batch() if hasattr(base, "dummy_batch") else None
  return base.init(rng, dummy)


def _embed_dim(model, encoder_params) -> int:
  audio = jax.ShapeDtypeStruct((1, eval_data.SAMPLE_RATE), jnp.float32)
  mask = jax.ShapeDtypeStruct((1, eval_data.SAMPLE_RATE), jnp.int32)
  return jax.eval_shape(model.encode_speech, meta.unbox(encoder_params), audio, mask)[2].shape[-1]


def _head_logits(head, frames):
  return frames @ head["kernel"] + head["bias"]


def ctc_logits(head, frames: jax.Array, frame_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Frames [B, T, D] and mask [B, T] -> CTC logits [B, T k, V] and their mask [B, T k].

  A [D, V] kernel gives one CTC step a frame; a [D, k, V] kernel (FinetuneConfig.ctc_upsample)
  gives k consecutive steps a frame, each frame's own."""
  kernel = head["kernel"]
  k = 1 if kernel.ndim == 2 else kernel.shape[1]
  flat = {"kernel": kernel.reshape(kernel.shape[0], -1), "bias": head["bias"].reshape(-1)}
  logits = _head_logits(flat, frames.astype(jnp.float32))  # [B, T, k V]: frame t's step j at j V
  b, t, _ = logits.shape
  return logits.reshape(b, t * k, -1), jnp.repeat(frame_mask, k, axis=1)


def _classifier_logits(head, pooled):
  # The standardization is fixed (a zero gradient is a zero Adam update); only kernel and bias learn.
  mean, inv_std = jax.lax.stop_gradient(head["mean"]), jax.lax.stop_gradient(head["inv_std"])
  return _head_logits(head, (pooled.astype(jnp.float32) - mean) * inv_std)


class _HeadTask:
  """Shared parts: the pre-trained model under "encoder", frozen by stop_gradient when asked."""

  def __init__(self, base: Any, num_classes: int, freeze_encoder: bool = False, seed: int = 0,
               time_mask_prob: float = 0.0, time_mask_length: int = 10):
    """`seed`: the head's initialization (the encoder's comes from the pre-trained checkpoint);
    `time_mask_*`: FinetuneConfig's (the CTC task's training noise)."""
    self.base, self.num_classes, self.freeze_encoder, self.seed = base, num_classes, freeze_encoder, seed
    self.time_mask_prob, self.time_mask_length = time_mask_prob, time_mask_length

  def _encoder(self, params):
    return jax.lax.stop_gradient(params["encoder"]) if self.freeze_encoder else params["encoder"]

  def _head_params(self, rng, dim: int) -> dict:
    kernel = jax.random.normal(rng, (dim, self.num_classes), jnp.float32) * (1.0 / np.sqrt(dim))
    return {"kernel": nn.LogicallyPartitioned(kernel, ("embed", None)),
            "bias": nn.LogicallyPartitioned(jnp.zeros((self.num_classes,), jnp.float32), (None,))}

  def init(self, rng: jax.Array, batch: Any) -> Any:
    del batch
    encoder = _init_base(self.base, rng)
    return {"encoder": encoder, "head": self._head_params(jax.random.PRNGKey(self.seed), _embed_dim(self.base, encoder))}


register_task("translate")(translation_model.TranslationModel)


@register_task("ctc")
class CTCTask(_HeadTask):
  """CTC over the corpus' characters, `upsample` CTC steps on every encoder frame. Batches: the
  contract's paired stream, {"paired": {"audio", "audio_mask", "tokens", "tokens_mask", "lang"}},
  and with `text_weight` > 0 its text stream too ({"text": {"tokens", "tokens_mask", "lang"}}): text
  through the base's text CTC path (MSLAMModel.encode_text_for_ctc) into the same head."""

  def __init__(self, base: Any, num_classes: int, upsample: int = 1, text_weight: float = 0.0, **kwargs):
    super().__init__(base, num_classes, **kwargs)
    self.upsample, self.text_weight = upsample, text_weight

  def _head_params(self, rng, dim: int) -> dict:
    if self.upsample == 1:
      return super()._head_params(rng, dim)
    k, v = self.upsample, self.num_classes
    kernel = jax.random.normal(rng, (dim, k, v), jnp.float32) * (1.0 / np.sqrt(dim))
    return {"kernel": nn.LogicallyPartitioned(kernel, ("embed", None, None)),
            "bias": nn.LogicallyPartitioned(jnp.zeros((k, v), jnp.float32), (None, None))}

  def loss_fn(self, params, batch, rng, step):
    del step
    p = batch["paired"]
    if self.time_mask_prob > 0 and not self.freeze_encoder:
      frames, frame_mask, _ = self.base.encode_speech_for_training(
          self._encoder(params), p["audio"], p["audio_mask"], rng, self.time_mask_prob, self.time_mask_length,
          **_language(self.base, p))
    else:
      frames, frame_mask, _ = self.base.encode_speech(self._encoder(params), p["audio"], p["audio_mask"],
                                                      **_language(self.base, p))
    loss, infeasible = _ctc_per_char(params["head"], frames, frame_mask, p["tokens"], p["tokens_mask"])
    metrics = {"ctc_loss_per_char": loss, "ctc_infeasible": infeasible}
    if self.text_weight > 0 and "text" in batch:
      t = batch["text"]
      frames, frame_mask = self.base.encode_text_for_ctc(self._encoder(params), t["tokens"], t["tokens_mask"],
                                                         jax.random.fold_in(rng, 1), **_language(self.base, t))
      metrics["text_ctc_loss_per_char"], metrics["text_ctc_infeasible"] = _ctc_per_char(
          params["head"], frames, frame_mask, t["tokens"], t["tokens_mask"])
      loss = loss + self.text_weight * metrics["text_ctc_loss_per_char"]
    return loss, metrics


def _language(base: Any, stream: dict) -> dict:
  """{"lang": the rows' language ids} for a base that reads them (has_language_vectors), else {}."""
  return {"lang": stream["lang"]} if getattr(base, "has_language_vectors", False) else {}


def _ctc_per_char(head, frames, frame_mask, tokens, tokens_mask) -> tuple[jax.Array, jax.Array]:
  """(CTC per label character, utterances dropped): those whose frames cannot hold their
  transcript contribute nothing (not a 1e5 spike)."""
  logits, frame_mask = ctc_logits(head, frames, frame_mask)
  per_seq = optax.ctc_loss(logits, 1.0 - frame_mask, tokens, 1.0 - tokens_mask, blank_id=asr.BLANK_ID)
  ok = per_seq < _INFEASIBLE
  loss = jnp.sum(jnp.where(ok, per_seq, 0.0)) / jnp.maximum(jnp.sum(tokens_mask.sum(-1) * ok), 1)
  return loss, jnp.sum(~ok).astype(jnp.float32)


@register_task("classify")
class ClassifyTask(_HeadTask):
  """A linear head on the pooled speech embedding, standardized by fixed statistics (set by the job
  from the training clips, as a linear probe does) and starting at zero (every class alike).
  Batches: {"speech": {"audio", "audio_mask", "lang"}} where "lang" holds the class index."""

  def _head_params(self, rng, dim: int) -> dict:
    del rng
    zeros = lambda *shape: jnp.zeros(shape, jnp.float32)
    return {"kernel": nn.LogicallyPartitioned(zeros(dim, self.num_classes), ("embed", None)),
            "bias": nn.LogicallyPartitioned(zeros(self.num_classes), (None,)),
            "mean": nn.LogicallyPartitioned(zeros(dim), ("embed",)),
            "inv_std": nn.LogicallyPartitioned(jnp.ones((dim,), jnp.float32), ("embed",))}

  def logits(self, params, audio, audio_mask):
    _, _, pooled = self.base.encode_speech(self._encoder(params), audio, audio_mask)
    return _classifier_logits(params["head"], pooled)

  def loss_fn(self, params, batch, rng, step):
    del rng, step
    s = batch["speech"]
    logits = self.logits(params, s["audio"], s["audio_mask"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, s["lang"]).mean()
    return loss, {"accuracy": jnp.mean((logits.argmax(-1) == s["lang"]).astype(jnp.float32))}


# -- data -----------------------------------------------------------------------------------------

@dataclasses.dataclass
class Examples:
  """Fine-tuning examples in memory: audio clips and, per task, a label sequence or a class."""
  audios: list[np.ndarray]
  labels: list[Any]  # int32 arrays (ctc) or class indices (classify)
  audio_samples: int  # the longest batch's audio length (without buckets: every batch's)
  label_length: int = 0
  texts: list[np.ndarray] = dataclasses.field(default_factory=list)  # ctc's text injection (with_texts)
  # ctc: each clip's and each text's language id (-1 unknown), the batches' "lang"
  langs: list[int] = dataclasses.field(default_factory=list)
  text_langs: list[int] = dataclasses.field(default_factory=list)


def length_buckets(lengths: Sequence[int], seconds: Sequence[float], longest: int
                   ) -> tuple[list[int], list[list[int]] | None]:
  """`FinetuneConfig.length_buckets` as audio bounds in samples (ascending, the last `longest`) and
  the indices of the examples each bound holds first (None without buckets: one group, one shape).
  A batch drawn from one group and padded to its bound (`padded_length`) wastes less compute on
  padding than one padded to the longest clip: a fine-tune of short clips runs ~40 % faster."""
  bounds = sorted({min(longest, int(b * eval_data.SAMPLE_RATE)) for b in seconds} | {longest})
  if len(bounds) == 1:
    return bounds, None
  bucket_of = [min(bisect.bisect_left(bounds, n), len(bounds) - 1) for n in lengths]
  return bounds, [[i for i, k in enumerate(bucket_of) if k == b] for b in range(len(bounds))]


def padded_length(bounds: Sequence[int], longest_in_batch: int) -> int:
  """The smallest bound that holds a batch's longest clip (the last bound for any longer one)."""
  return bounds[min(bisect.bisect_left(bounds, longest_in_batch), len(bounds) - 1)]


def language_id(code: str) -> int:
  """The batch contract's id of a language code; -1 (unknown: no language vector) outside the registry."""
  try:
    return languages.lang_id(code)
  except KeyError:
    return -1


def label_ids(vocab: Any, text: str) -> list[int]:
  """A text's CTC labels: its vocabulary ids without the reserved ones (padding, EOS, ...)."""
  return [i for i in vocab.encode(text) if i >= NUM_RESERVED]


def ctc_examples(utterances: Sequence[Any], vocab: Any, max_audio_seconds: float) -> Examples:
  """Paired utterances -> audio and character ids; empty, unlabelled or too long ones skipped."""
  max_samples = int(max_audio_seconds * eval_data.SAMPLE_RATE)
  audios, labels, langs, dropped = [], [], [], 0
  for utt in utterances:
    ids = label_ids(vocab, utt.text)
    if not len(utt.audio) or not ids or len(utt.audio) > max_samples:
      dropped += 1
      continue
    audios.append(np.asarray(utt.audio, np.float32))
    labels.append(np.asarray(ids, np.int32))
    langs.append(language_id(utt.lang))
  if dropped:
    logging.warning("CTC fine-tuning: skipped %d utterances (no audio, empty transcript or longer "
                    "than FinetuneConfig.max_audio_seconds)", dropped)
  if not audios:
    raise ValueError("CTC fine-tuning has no usable paired utterances")
  audio_len = -(-max(len(a) for a in audios) // eval_data.SAMPLE_RATE) * eval_data.SAMPLE_RATE
  label_len = -(-max(len(l) for l in labels) // 32) * 32
  return Examples(audios, labels, audio_len, label_len, langs=langs)


def with_texts(examples: Examples, utterances: Iterable[Any], vocab: Any) -> Examples:
  """`examples` plus text rows for FinetuneConfig.text_ctc: each text's characters, cut to the
  transcripts' padded length (text rows then look like the transcripts); empty texts skipped."""
  rows = [(np.asarray(ids[:examples.label_length], np.int32), language_id(u.lang)) for u, ids in
          ((u, label_ids(vocab, u.text)) for u in utterances) if ids]
  if not rows:
    raise ValueError("FinetuneConfig.text_ctc > 0, but the corpus has no train text")
  return dataclasses.replace(examples, texts=[r for r, _ in rows], text_langs=[l for _, l in rows])


def class_examples(audios: Sequence[np.ndarray], labels: Sequence[str], max_audio_seconds: float
                   ) -> tuple[Examples, list[str]]:
  """Clips and class names -> Examples with class indices, and the sorted class names."""
  # A label holds for the whole clip, so a long clip is cropped (its first max_audio_seconds), not dropped.
  max_samples = int(max_audio_seconds * eval_data.SAMPLE_RATE)
  kept = [(np.asarray(a[:max_samples], np.float32), l) for a, l in zip(audios, labels) if len(a)]
  if len(kept) < len(audios):
    logging.warning("Classifier fine-tuning: skipped %d empty clips", len(audios) - len(kept))
  classes = sorted({l for _, l in kept})
  if len(classes) < 2:
    raise ValueError("a classifier needs at least two classes")
  audio_len = -(-max(len(a) for a, _ in kept) // eval_data.SAMPLE_RATE) * eval_data.SAMPLE_RATE
  return Examples([a for a, _ in kept], [classes.index(l) for _, l in kept], audio_len), classes


def _langs(langs: Sequence[int], idx: Sequence[int]) -> np.ndarray:
  """The rows' language ids; -1 (unknown) where the examples carry none."""
  return np.asarray([langs[i] if langs else -1 for i in idx], np.int32)


def example_batch_fn(examples: Examples, task: str, bounds: Sequence[int] | None = None
                     ) -> Callable[..., dict]:
  """indices (and text indices) -> a task batch of those examples: the contract's paired stream
  (ctc; its text stream with `text_idx`) or speech stream with the class index as "lang"
  (classify). `bounds` (`length_buckets`): the audio is padded to the smallest that holds the
  batch; None: to `examples.audio_samples`."""

  def make(idx, text_idx=None):
    clips = [examples.audios[i] for i in idx]
    samples = padded_length(bounds, max(len(a) for a in clips)) if bounds else examples.audio_samples
    audio, audio_mask = eval_data.pad_audio(clips, len(idx), samples)
    if task == "ctc":
      tokens, tokens_mask = eval_data.pad_tokens([examples.labels[i] for i in idx], len(idx), examples.label_length)
      batch = {"paired": {"audio": audio, "audio_mask": audio_mask, "tokens": tokens, "tokens_mask": tokens_mask,
                          "lang": _langs(examples.langs, idx)}}
      if text_idx is not None:
        tokens, tokens_mask = eval_data.pad_tokens([examples.texts[i] for i in text_idx], len(text_idx),
                                                   examples.label_length)
        batch["text"] = {"tokens": tokens, "tokens_mask": tokens_mask, "lang": _langs(examples.text_langs, text_idx)}
      return batch
    return {"speech": {"audio": audio, "audio_mask": audio_mask,
                       "lang": np.asarray([examples.labels[i] for i in idx], np.int32)}}

  return make


class ExampleBatches:
  """Batches of example indices drawn from one generator seeded by `seed` (distinct within a batch
  unless there are fewer examples than rows); the position ({"position": n}) restores the stream exactly (the
  Trainer's resume contract: the generator is replayed over n index draws, which reads no data).
  `make_batch(indices)` builds the global batch; each process yields its rows of it."""

  def __init__(self, num_examples: int, make_batch: Callable[..., dict], batch_size: int,
               seed: int = 0, shard_index: int = 0, num_shards: int = 1,
               groups: Sequence[Sequence[int]] | None = None, num_texts: int = 0, text_batch_size: int = 0):
    """`groups`: index groups (e.g. length buckets); each batch then draws from one group, chosen
    with probability proportional to its size. `num_texts` > 0: each batch also draws
    `text_batch_size` text indices, `make_batch(indices, text_indices)`."""
    if num_examples < 1:
      raise ValueError("fine-tuning has no examples")
    if batch_size % num_shards:
      raise ValueError(f"FinetuneConfig.batch_size={batch_size} does not divide over {num_shards} processes")
    self.num_examples, self.make_batch, self.batch_size, self.seed = num_examples, make_batch, batch_size, seed
    self.shard_index, self.num_shards = shard_index, num_shards
    self.num_texts, self.text_batch_size = num_texts, text_batch_size
    if num_texts and text_batch_size % num_shards:
      raise ValueError(f"FinetuneConfig.text_batch_size={text_batch_size} does not divide over {num_shards} processes")
    self.groups = [np.asarray(g, np.int64) for g in (groups or [range(num_examples)]) if len(g)]
    sizes = np.array([len(g) for g in self.groups], np.float64)
    self._group_p = sizes / sizes.sum()
    self.set_state({"position": 0})

  def _draw(self, rng: np.random.Generator) -> tuple[list[int], ...]:
    group = self.groups[0] if len(self.groups) == 1 else self.groups[rng.choice(len(self.groups), p=self._group_p)]
    replace = len(group) < self.batch_size
    drawn = ([int(i) for i in group[rng.choice(len(group), size=self.batch_size, replace=replace)]],)
    if self.num_texts:
      replace = self.num_texts < self.text_batch_size
      drawn += ([int(i) for i in rng.choice(self.num_texts, size=self.text_batch_size, replace=replace)],)
    return drawn

  def get_state(self) -> dict:
    return {"position": self.position}

  def set_state(self, state: dict) -> None:
    self.position = int(state["position"])
    self._rng = np.random.default_rng(self.seed)
    for _ in range(self.position):
      self._draw(self._rng)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    batch = self.make_batch(*self._draw(self._rng))
    self.position += 1
    return jax.tree.map(lambda x: x[self._rows(x)], batch)

  def _rows(self, x) -> slice:
    """This process's rows of a global batch array (each stream divides over the processes)."""
    per = x.shape[0] // self.num_shards
    return slice(self.shard_index * per, (self.shard_index + 1) * per)

  @property
  def element_spec(self) -> dict:
    """This process's batch structure (the Trainer reads it without consuming a batch)."""
    first = self.make_batch(*self._draw(np.random.default_rng(self.seed)))
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] // self.num_shards,) + x.shape[1:], x.dtype),
                        first)


def example_batches(examples: Examples, task: str, settings: FinetuneConfig) -> Callable[..., ExampleBatches]:
  """The fine-tuning job's iterator factory (shard_index=, num_shards=) over `examples`, in
  `settings.length_buckets` where set."""
  bounds, groups = length_buckets([len(a) for a in examples.audios], settings.length_buckets,
                                  examples.audio_samples)
  texts = len(examples.texts) if task == "ctc" and settings.text_ctc > 0 else 0
  return functools.partial(ExampleBatches, len(examples.audios),
                           example_batch_fn(examples, task, bounds), settings.batch_size,
                           settings.seed, groups=groups, num_texts=texts, text_batch_size=settings.text_batch_size)


# -- inference with a fine-tuned head --------------------------------------------------------------

@dataclasses.dataclass
class FinetunedCTC:
  """An encoder with a CTC head over the character vocabulary."""
  model: Any
  params: Any  # {"encoder": ..., "head": {"kernel", "bias"}}
  vocab: Any
  losses: list[float] = dataclasses.field(default_factory=list)
  batch_size: int = 8
  directory: str | None = None  # where it was fine-tuned (its character LM's fusion weights go there)
  langs: tuple[str, ...] = ()  # the languages it was fine-tuned on, where known
  # A call with fewer clips than batch_size pads them to a power of two, not to batch_size (the
  # commands: one clip is decoded alone; eval_data.Encoder's fit_small_calls).
  fit_small_calls: bool = False

  def __post_init__(self):
    self._log_probs = _ctc_log_probs_fn(self.model)
    self.params = meta.unbox(self.params)

  def _rows(self, count: int) -> int:
    return eval_data.batch_rows(count, self.batch_size) if self.fit_small_calls else self.batch_size

  def log_probs(self, audios: Sequence[np.ndarray], langs: Sequence[str | None] | None = None, *,
                rows: int | None = None) -> list[np.ndarray]:
    """Per utterance, the [T_i, V] log-probabilities of its valid frames; `langs`: their language
    codes, for an encoder with language vectors (MSLAMEncoder.num_languages); None, or a None
    entry: unknown. `rows`: each batch's rows (default: those of a call with `audios` alone)."""
    out = []
    rows = rows or self._rows(len(audios))
    for start in range(0, len(audios), self.batch_size):
      chunk = audios[start:start + self.batch_size]
      audio, mask = eval_data.pad_audio(chunk, rows, eval_data.AUDIO_BUCKET)
      lang = np.full((rows,), -1, np.int32)
      if langs is not None:
        lang[:len(chunk)] = [-1 if code is None else language_id(code) for code in langs[start:start + self.batch_size]]
      lp, fmask = self._log_probs(self.params, audio, mask, lang)
      lp, fmask = np.asarray(lp), np.asarray(fmask)
      out.extend(lp[i, :int(fmask[i].sum())] for i in range(len(chunk)))
    return out

  def transcribe(self, audios: Sequence[np.ndarray], langs: Sequence[str | None] | None = None,
                 beam_size: int = 0, lms: Any = None, progress: str | None = None) -> list[str]:
    """The text of each of `audios` (`transcriptions`, without the log-probabilities)."""
    return [text for text, _ in self.transcriptions(audios, langs, beam_size, lms, progress)]

  def transcriptions(self, audios: Sequence[np.ndarray], langs: Sequence[str | None] | None = None,
                     beam_size: int = 0, lms: Any = None, progress: str | None = None
                     ) -> Iterator[tuple[str, np.ndarray]]:
    """(text, [T, V] log-probabilities) of each of `audios` (16 kHz), in order: greedy with
    `beam_size` 0, else prefix beam search, fused with the clip's language's character LM where `lms`
    (char_lm.LanguageModels) is given. `langs`: the clips' codes (the LM's language, and the
    encoder's language vectors where it has them); None or a None entry: unknown. `progress`: the
    label of a bar of audio seconds a second."""
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    langs = list(langs) if langs is not None else [None] * len(audios)
    if lms is not None and beam_size < 1:
      raise ValueError("LM fusion decodes by beam search: give a beam_size >= 1")
    seconds = sum(len(a) for a in audios) / eval_data.SAMPLE_RATE
    with tqdm(total=seconds, desc=progress, disable=progress is None, unit="audio s", dynamic_ncols=True,
              bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} audio s [{elapsed}<{remaining}, {rate_fmt}]") as bar:
      rows = self._rows(len(audios))  # the whole list's: its last chunk no other shape
      for start in range(0, len(audios), self.batch_size):
        chunk, chunk_langs = audios[start:start + self.batch_size], langs[start:start + self.batch_size]
        for audio, lang, lp in zip(chunk, chunk_langs, self.log_probs(chunk, chunk_langs, rows=rows)):
          if lms is not None:
            ids = asr.lm_beam_decode(lp, lms.for_language(lang), lms.weight, lms.length_bonus, beam_size)
          else:
            ids = asr.beam_decode(lp, beam_size) if beam_size > 0 else asr.greedy_decode(lp)
          bar.update(len(audio) / eval_data.SAMPLE_RATE)
          yield asr.ids_to_text(self.vocab, ids), lp


def _ctc_log_probs_fn(model):
  """The jitted CTC forward of one fine-tuned model (each audio shape compiles once for it)."""
  def log_probs(params, audio, mask, lang):
    frames, frame_mask, _ = model.encode_speech(params["encoder"], audio, mask, **_language(model, {"lang": lang}))
    logits, frame_mask = ctc_logits(params["head"], frames, frame_mask)
    return jax.nn.log_softmax(logits), frame_mask
  return jax.jit(log_probs)


def pretrained_head(params: Any, name: str | None, dim: int, num_classes: int, model: Any = None,
                    upsample: int = 1) -> dict | None:
  """The [dim, V>=num_classes] kernel and bias under params[name], cut to the first num_classes
  (with `upsample` k > 1, repeated into a [dim, k, V] head: every step of a frame starts as the
  pre-trained one); None (a fresh head) when there is none, or when `model` never trained it (its
  CTC objective's weight is 0, e.g. a speech-only run, whose head is still its random
  initialisation)."""
  if not name or not isinstance(params, dict) or name not in params:
    return None
  weights = getattr(model, "weights", None)
  if weights is not None and getattr(weights, "ctc", 1.0) <= 0:
    logging.info("params[%r] was never trained (ObjectiveWeights.ctc = 0): the CTC head starts fresh", name)
    return None
  leaves = {_keys(path)[-1]: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params[name])[0]}
  kernel, bias = leaves.get("kernel"), leaves.get("bias")
  if kernel is None or np.ndim(kernel) != 2 or kernel.shape[0] != dim or kernel.shape[1] < num_classes:
    logging.warning("params[%r] holds no [%d, >=%d] kernel; the CTC head starts fresh", name, dim, num_classes)
    return None
  bias = jnp.zeros((num_classes,), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)[:num_classes]
  logging.info("CTC head starts from the pre-trained params[%r]", name)
  kernel = jnp.asarray(kernel, jnp.float32)[:, :num_classes]
  if upsample > 1:
    kernel, bias = jnp.repeat(kernel[:, None], upsample, axis=1), jnp.repeat(bias[None], upsample, axis=0)
  return {"kernel": kernel, "bias": bias}


def ctc_metrics(tuned: FinetunedCTC, utterances: Iterable[Any], prefix: str, beam_size: int | None = 8,
                lms: Any = None) -> dict[str, float]:
  """{prefix}_cer / _wer (greedy), {prefix}_cer_beam / _wer_beam (none with `beam_size` None), and
  per language; with `lms` (char_lm.LanguageModels, fusion weights tuned) also {prefix}_cer_lm /
  _wer_lm: beam search fused with the utterance's language's character LM.

  `utterances` may be a stream (e.g. a benchmark's test split): they are decoded a batch at a time
  and only the texts are kept."""
  if lms is not None and beam_size is None:  # before any decoding, not at the first LM-fused clip
    raise ValueError(f"ctc_metrics({prefix!r}): LM fusion is a beam search; give it a beam_size, not None")
  methods = ("greedy",) + (("beam",) if beam_size is not None else ()) + (("lm",) if lms is not None else ())
  refs, langs, decoded = [], [], {method: [] for method in methods}
  chunk = []

  def decode():
    for u, lp in zip(chunk, tuned.log_probs([u.audio for u in chunk], [u.lang for u in chunk])):
      decoded["greedy"].append(asr.ids_to_text(tuned.vocab, asr.greedy_decode(lp)))
      if beam_size is not None:
        decoded["beam"].append(asr.ids_to_text(tuned.vocab, asr.beam_decode(lp, beam_size)))
      if lms is not None:
        ids = asr.lm_beam_decode(lp, lms.for_language(u.lang), lms.weight, lms.length_bonus, beam_size)
        decoded["lm"].append(asr.ids_to_text(tuned.vocab, ids))
    chunk.clear()

  for u in utterances:
    if not len(u.audio) or not u.text.strip():
      continue
    refs.append(tuned.vocab.decode(tuned.vocab.encode(u.text)))  # NFC, as the vocab sees it
    langs.append(u.lang)
    chunk.append(u)
    if len(chunk) == tuned.batch_size:
      decode()
  decode()
  if not refs:
    raise ValueError(f"{prefix}: no test utterances to score")
  metrics = {}
  for method in methods:
    hyps = decoded[method]
    suffix = "" if method == "greedy" else f"_{method}"
    for lang, rates in asr.error_rates_by_language(refs, hyps, langs).items():
      if lang == "all":
        metrics[f"{prefix}_cer{suffix}"] = rates["cer"]
        metrics[f"{prefix}_wer{suffix}"] = rates["wer"]
      else:
        metrics[f"{prefix}_cer{suffix}/{lang}"] = rates["cer"]
        metrics[f"{prefix}_wer{suffix}/{lang}"] = rates["wer"]
    if method == "greedy":
      for ref, hyp, lang in list(zip(refs, hyps, langs))[:3]:
        logging.info("%s [%s] ref: %s | hyp: %s", prefix, lang, ref, hyp)
  if lms is not None:
    metrics[f"{prefix}_lm_weight"], metrics[f"{prefix}_lm_length_bonus"] = lms.weight, lms.length_bonus
  metrics[f"{prefix}_num_test"] = float(len(refs))
  metrics[f"{prefix}_final_train_loss"] = float(np.mean(tuned.losses[-10:])) if tuned.losses else float("nan")
  return metrics


def _plot_losses(path: str, losses: Sequence[float], title: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3))
  ax.plot(np.arange(1, len(losses) + 1), losses)
  ax.set_xlabel("fine-tuning step")
  ax.set_ylabel("CTC loss per character")
  ax.set_title(title)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=100)
  plt.close(fig)


@dataclasses.dataclass
class FinetunedClassifier:
  model: Any
  params: Any
  classes: list[str]
  losses: list[float]
  batch_size: int = 8

  def __post_init__(self):
    def logits(params, audio, mask):
      _, _, pooled = self.model.encode_speech(params["encoder"], audio, mask)
      return _classifier_logits(params["head"], pooled)
    self._logits = jax.jit(logits)
    self.params = meta.unbox(self.params)

  def predict(self, audios: Sequence[np.ndarray]) -> list[str]:
    out = []
    for start in range(0, len(audios), self.batch_size):
      chunk = audios[start:start + self.batch_size]
      audio, mask = eval_data.pad_audio(chunk, self.batch_size, eval_data.AUDIO_BUCKET)
      out.extend(np.asarray(self._logits(self.params, audio, mask)).argmax(-1)[:len(chunk)].tolist())
    return [self.classes[i] for i in out]
