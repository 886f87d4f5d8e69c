"""Downstream fine-tuning on top of a pre-trained encoder: CTC ASR and pooled classification.

Freezing choices (`freeze`), the same for both heads:
  "frozen"  the encoder is fixed; only the new head trains (the encoder output is stop-gradiented,
            so no backward pass runs through it).
  "top_k"   the top `top_k` layers of the encoder's top stack (the shared stack of mSLAM, found by
            the name `top_stack`) train with the head; everything below is fixed.
  "all"     every encoder parameter trains.
Whole frozen leaves get `optax.set_to_zero` inside an `optax.multi_transform` (no Adam state);
leaves of an nn.scan stack, where only some rows of the stacked "layers" axis train, get their
gradient multiplied by a 0/1 row mask (with Adam and no weight decay a zero gradient is a zero
update). The head learns at `learning_rate`, the encoder at `encoder_learning_rate`.
"""
import dataclasses
import json
import logging
import os
import re
from typing import Any, Sequence

import gin
import jax
import jax.numpy as jnp
import numpy as np
import optax
import tqdm
from flax.core import meta

from mslam_jax.evaluation import asr
from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import base

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
  warmup_steps: int = 30
  clip_norm: float = 1.0
  max_audio_seconds: float = 20.0
  seed: int = 0
  # Start the CTC head from the pre-trained one under this top-level parameter name when there is
  # one (mSLAM-CTC pre-trains a CTC head on paired data); None: a fresh head. A head still on CTC's
  # all-blank plateau is a worse start than a fresh one (so the demo, after 120 steps, uses None).
  pretrained_head: str | None = "ctc_head"

  def __post_init__(self):
    if self.freeze not in FREEZE_MODES:
      raise ValueError(f"FinetuneConfig.freeze={self.freeze!r}; choose one of {FREEZE_MODES}")
    if self.freeze == "top_k" and self.top_k < 1:
      raise ValueError("FinetuneConfig.top_k must be >= 1 with freeze='top_k'")
    if self.steps < 1 or self.batch_size < 1:
      raise ValueError("FinetuneConfig.steps and FinetuneConfig.batch_size must be >= 1")


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


def make_optimizer(encoder_masks: Any, head_params: Any, config: FinetuneConfig) -> optax.GradientTransformation:
  def schedule(peak):
    return optax.warmup_cosine_decay_schedule(0.0, peak, max(1, config.warmup_steps),
                                              max(config.steps, config.warmup_steps + 1), end_value=peak * 0.1)

  labels = {"encoder": jax.tree.map(lambda m: "frozen" if _is_frozen(m) else "encoder", encoder_masks),
            "head": jax.tree.map(lambda _: "head", head_params)}
  return optax.chain(
      optax.clip_by_global_norm(config.clip_norm),
      optax.multi_transform({"head": optax.adam(schedule(config.learning_rate)),
                             "encoder": optax.adam(schedule(config.encoder_learning_rate)),
                             "frozen": optax.set_to_zero()}, labels))


def count_trainable(encoder_params: Any, masks: Any) -> int:
  total = 0
  for leaf, mask in zip(jax.tree.leaves(encoder_params), jax.tree.leaves(masks)):
    total += int(np.sum(np.broadcast_to(np.asarray(mask), np.shape(leaf)) > 0))
  return total


# -- generic fine-tuning loop ---------------------------------------------------------------------

def _train(loss_fn, encoder_params, head, config: FinetuneConfig, sample_batch, desc: str):
  """Adam over {"encoder", "head"} with the config's freezing; returns params and loss curve."""
  masks = gradient_masks(encoder_params, config)
  logging.info("%s: freeze=%s, %d of %d encoder parameters train", desc, config.freeze,
               count_trainable(encoder_params, masks), sum(np.size(x) for x in jax.tree.leaves(encoder_params)))
  tx = make_optimizer(masks, head, config)
  params = {"encoder": encoder_params, "head": head}
  opt_state = tx.init(params)
  frozen_encoder = config.freeze == "frozen"

  def step(params, opt_state, batch):
    def wrapped(p):
      enc = jax.lax.stop_gradient(p["encoder"]) if frozen_encoder else p["encoder"]
      return loss_fn({"encoder": enc, "head": p["head"]}, batch)
    loss, grads = jax.value_and_grad(wrapped)(params)
    grads = {"encoder": jax.tree.map(lambda g, m: g * jnp.asarray(m, g.dtype), grads["encoder"], masks),
             "head": grads["head"]}
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step)

  rng = np.random.default_rng(config.seed)
  losses, skipped = [], 0
  for _ in tqdm.trange(config.steps, desc=desc, unit="step", leave=False):
    new_params, new_opt_state, loss = step(params, opt_state, sample_batch(rng))
    loss = float(loss)
    if not np.isfinite(loss):
      skipped += 1  # a bad batch must not end the job: keep the old state
      continue
    params, opt_state = new_params, new_opt_state
    losses.append(loss)
  if skipped:
    logging.warning("%s: skipped %d non-finite updates", desc, skipped)
  return params, losses


# -- CTC ----------------------------------------------------------------------------------------

@dataclasses.dataclass
class FinetunedCTC:
  """An encoder with a CTC head over the character vocabulary."""
  model: Any
  params: Any  # {"encoder": ..., "head": {"kernel", "bias"}}
  vocab: Any
  losses: list[float] = dataclasses.field(default_factory=list)
  batch_size: int = 8

  def __post_init__(self):
    self._log_probs = _ctc_log_probs_fn(self.model)

  def log_probs(self, audios: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per utterance, the [T_i, V] log-probabilities of its valid frames."""
    out = []
    for start in range(0, len(audios), self.batch_size):
      chunk = audios[start:start + self.batch_size]
      audio, mask = eval_data.pad_audio(chunk, self.batch_size, eval_data.AUDIO_BUCKET)
      lp, fmask = self._log_probs(self.params, audio, mask)
      lp, fmask = np.asarray(lp), np.asarray(fmask)
      out.extend(lp[i, :int(fmask[i].sum())] for i in range(len(chunk)))
    return out

  def transcribe(self, audios: Sequence[np.ndarray], method: str = "greedy", beam_size: int = 8) -> list[str]:
    texts = []
    for lp in self.log_probs(audios):
      ids = asr.greedy_decode(lp) if method == "greedy" else asr.beam_decode(lp, beam_size)
      texts.append(asr.ids_to_text(self.vocab, ids))
    return texts

  def save(self, directory: str) -> None:
    import flax.serialization  # pylint: disable=g-import-not-at-top
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "ctc_params.msgpack"), "wb") as f:
      f.write(flax.serialization.to_bytes(jax.device_get(self.params)))
    self.vocab.save(os.path.join(directory, "vocab"))
    with open(os.path.join(directory, "ctc_losses.json"), "w") as f:
      json.dump(self.losses, f)

  @classmethod
  def load(cls, directory: str, model: Any, encoder_params: Any) -> "FinetunedCTC":
    """Restores a saved head (and encoder) onto the structure of `encoder_params`."""
    import flax.serialization  # pylint: disable=g-import-not-at-top
    vocab = eval_data.load_vocabulary(directory)
    head = _init_head(jax.random.PRNGKey(0), _embed_dim(model, encoder_params), vocab.vocab_size)
    with open(os.path.join(directory, "ctc_params.msgpack"), "rb") as f:
      params = flax.serialization.from_bytes({"encoder": meta.unbox(encoder_params), "head": head}, f.read())
    return cls(model, params, vocab)


def _ctc_log_probs_fn(model):
  """The jitted CTC forward of one fine-tuned model (each audio shape compiles once for it)."""
  def log_probs(params, audio, mask):
    frames, frame_mask, _ = model.encode_speech(params["encoder"], audio, mask)
    return jax.nn.log_softmax(_head_logits(params["head"], frames.astype(jnp.float32))), frame_mask
  return jax.jit(log_probs)


def _head_logits(head, frames):
  return frames @ head["kernel"] + head["bias"]


def _classifier_logits(head, pooled):
  # The standardization is fixed (a zero gradient is a zero Adam update); only kernel and bias learn.
  mean, inv_std = jax.lax.stop_gradient(head["mean"]), jax.lax.stop_gradient(head["inv_std"])
  return _head_logits(head, (pooled.astype(jnp.float32) - mean) * inv_std)


def _init_head(rng, dim: int, num_classes: int):
  return {"kernel": jax.random.normal(rng, (dim, num_classes), jnp.float32) * (1.0 / np.sqrt(dim)),
          "bias": jnp.zeros((num_classes,), jnp.float32)}


def pretrained_head(params: Any, name: str | None, dim: int, num_classes: int) -> dict | None:
  """The [dim, V>=num_classes] kernel and bias under params[name], cut to the first num_classes."""
  if not name or not isinstance(params, dict) or name not in params:
    return None
  leaves = {_keys(path)[-1]: leaf for path, leaf in jax.tree_util.tree_flatten_with_path(params[name])[0]}
  kernel, bias = leaves.get("kernel"), leaves.get("bias")
  if kernel is None or np.ndim(kernel) != 2 or kernel.shape[0] != dim or kernel.shape[1] < num_classes:
    logging.warning("params[%r] holds no [%d, >=%d] kernel; the CTC head starts fresh", name, dim, num_classes)
    return None
  bias = jnp.zeros((num_classes,), jnp.float32) if bias is None else jnp.asarray(bias, jnp.float32)[:num_classes]
  logging.info("CTC head starts from the pre-trained params[%r]", name)
  return {"kernel": jnp.asarray(kernel, jnp.float32)[:, :num_classes], "bias": bias}


def _embed_dim(model, encoder_params) -> int:
  audio = jax.ShapeDtypeStruct((1, eval_data.SAMPLE_RATE), jnp.float32)
  mask = jax.ShapeDtypeStruct((1, eval_data.SAMPLE_RATE), jnp.int32)
  return jax.eval_shape(model.encode_speech, meta.unbox(encoder_params), audio, mask)[2].shape[-1]


def finetune_ctc(model: Any, params: Any, utterances: Sequence[Any], vocab: Any,
                 config: FinetuneConfig = FinetuneConfig()) -> FinetunedCTC:
  """Trains a CTC head (and, per `config.freeze`, encoder layers) on paired utterances."""
  max_samples = int(config.max_audio_seconds * eval_data.SAMPLE_RATE)
  audios, labels, dropped = [], [], 0
  for utt in utterances:
    ids = [i for i in vocab.encode(utt.text) if i >= 5]
    if not len(utt.audio) or not ids or len(utt.audio) > max_samples:
      dropped += 1
      continue
    audios.append(np.asarray(utt.audio, np.float32))
    labels.append(np.asarray(ids, np.int32))
  if dropped:
    logging.warning("CTC fine-tuning: skipped %d utterances (no audio, empty transcript or longer "
                    "than FinetuneConfig.max_audio_seconds)", dropped)
  if not audios:
    raise ValueError("CTC fine-tuning has no usable paired utterances")
  audio_len = -(-max(len(a) for a in audios) // eval_data.SAMPLE_RATE) * eval_data.SAMPLE_RATE
  label_len = -(-max(len(l) for l in labels) // 32) * 32
  encoder_params = meta.unbox(params)
  dim = _embed_dim(model, encoder_params)
  head = (pretrained_head(encoder_params, config.pretrained_head, dim, vocab.vocab_size)
          or _init_head(jax.random.PRNGKey(config.seed), dim, vocab.vocab_size))

  def sample_batch(rng):
    idx = rng.choice(len(audios), size=config.batch_size, replace=len(audios) < config.batch_size)
    # One shape for every batch (a bucket of exactly the longest clip): one compile.
    audio, audio_mask = eval_data.pad_audio([audios[i] for i in idx], len(idx), audio_len)
    tokens, tokens_mask = eval_data.pad_tokens([labels[i] for i in idx], len(idx), label_len)
    return audio, audio_mask, tokens, tokens_mask

  def loss_fn(p, batch):
    audio, audio_mask, tokens, tokens_mask = batch
    frames, frame_mask, _ = model.encode_speech(p["encoder"], audio, audio_mask)
    logits = _head_logits(p["head"], frames.astype(jnp.float32))
    per_seq = optax.ctc_loss(logits, 1.0 - frame_mask, tokens, 1.0 - tokens_mask, blank_id=asr.BLANK_ID)
    # Utterances whose frames cannot hold their transcript contribute nothing (not a 1e5 spike).
    ok = per_seq < _INFEASIBLE
    return jnp.sum(jnp.where(ok, per_seq, 0.0)) / jnp.maximum(jnp.sum(tokens_mask.sum(-1) * ok), 1)

  tuned, losses = _train(loss_fn, encoder_params, head, config, sample_batch, "finetune-ctc")
  logging.info("CTC fine-tuning: loss per character %.3f -> %.3f over %d steps",
               losses[0] if losses else float("nan"), losses[-1] if losses else float("nan"), len(losses))
  return FinetunedCTC(model, tuned, vocab, losses, config.batch_size)


def ctc_metrics(tuned: FinetunedCTC, utterances: Sequence[Any], prefix: str, beam_size: int = 8) -> dict[str, float]:
  """{prefix}_cer / _wer (greedy), {prefix}_cer_beam / _wer_beam, and per language."""
  utterances = [u for u in utterances if len(u.audio) and u.text.strip()]
  if not utterances:
    raise ValueError(f"{prefix}: no test utterances to score")
  refs = [tuned.vocab.decode(tuned.vocab.encode(u.text)) for u in utterances]  # NFC, as the vocab sees it
  langs = [u.lang for u in utterances]
  log_probs = tuned.log_probs([u.audio for u in utterances])
  metrics = {}
  for method in ("greedy", "beam"):
    hyps = [asr.ids_to_text(tuned.vocab, asr.greedy_decode(lp) if method == "greedy" else asr.beam_decode(lp, beam_size))
            for lp in log_probs]
    suffix = "" if method == "greedy" else "_beam"
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
  metrics[f"{prefix}_num_test"] = float(len(utterances))
  metrics[f"{prefix}_final_train_loss"] = float(np.mean(tuned.losses[-10:])) if tuned.losses else float("nan")
  return metrics


def checkpoint_ctc_head(ctx: base.EvalContext, corpus_dir: str, train_langs: Sequence[str] | None,
                        max_per_lang: int | None, config: FinetuneConfig) -> FinetunedCTC:
  """The CTC head fine-tuned on this checkpoint; the ctc, zero_shot and alignment evaluators share
  it through the checkpoint's context (trained once when their settings agree)."""
  langs = tuple(eval_data.training_languages(corpus_dir) if train_langs is None else train_langs)
  key = ("ctc_head", os.path.abspath(corpus_dir), langs, max_per_lang, config)
  if key not in ctx.shared:
    utts = eval_data.read_utterances(corpus_dir, "paired", "train", langs, max_per_lang)
    ctx.shared[key] = finetune_ctc(ctx.model, ctx.params, utts, eval_data.load_vocabulary(corpus_dir), config)
  return ctx.shared[key]


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
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


@base.register("ctc")
@gin.configurable
class CTCFinetuneEvaluator:
  """CTC fine-tuning on paired train data, CER/WER on paired test data of the same languages.

  `langs` defaults to the corpus' training languages (paired train data, not held out).
  """

  def __init__(self, corpus_dir: str | None = None, langs: Sequence[str] | None = None,
               max_train_per_lang: int | None = None, max_test_per_lang: int | None = 50,
               beam_size: int = 8, config: FinetuneConfig | None = None):
    self.corpus_dir = corpus_dir
    self.langs = langs
    self.max_train_per_lang, self.max_test_per_lang = max_train_per_lang, max_test_per_lang
    self.beam_size = beam_size
    self.config = config or FinetuneConfig()

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    corpus_dir = ctx.corpus(self.corpus_dir, type(self).__name__)
    tuned = checkpoint_ctc_head(ctx, corpus_dir, self.langs, self.max_train_per_lang, self.config)
    langs = self.langs or eval_data.training_languages(corpus_dir)
    test = eval_data.read_utterances(corpus_dir, "paired", "test", langs, self.max_test_per_lang)
    metrics = ctc_metrics(tuned, test, "ctc", self.beam_size)
    if ctx.out_dir:
      _plot_losses(os.path.join(ctx.out_dir, "ctc_finetune_loss.png"), tuned.losses,
                   f"CTC fine-tuning ({self.config.freeze}), step {ctx.step}")
    return metrics


# -- classification on pooled embeddings ---------------------------------------------------------

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

  def predict(self, audios: Sequence[np.ndarray]) -> list[str]:
    out = []
    for start in range(0, len(audios), self.batch_size):
      chunk = audios[start:start + self.batch_size]
      audio, mask = eval_data.pad_audio(chunk, self.batch_size, eval_data.AUDIO_BUCKET)
      out.extend(np.asarray(self._logits(self.params, audio, mask)).argmax(-1)[:len(chunk)].tolist())
    return [self.classes[i] for i in out]


def finetune_classifier(model: Any, params: Any, audios: Sequence[np.ndarray], labels: Sequence[str],
                        config: FinetuneConfig = FinetuneConfig()) -> FinetunedClassifier:
  """A linear head on the pooled speech embedding (e.g. language or intent), with `config.freeze`."""
  # A label holds for the whole clip, so a long clip is cropped (its first max_audio_seconds), not dropped.
  max_samples = int(config.max_audio_seconds * eval_data.SAMPLE_RATE)
  kept = [(np.asarray(a[:max_samples], np.float32), l) for a, l in zip(audios, labels) if len(a)]
  if len(kept) < len(audios):
    logging.warning("Classifier fine-tuning: skipped %d empty clips", len(audios) - len(kept))
  audios, labels = [a for a, _ in kept], [l for _, l in kept]
  classes = sorted(set(labels))
  if len(classes) < 2:
    raise ValueError("a classifier needs at least two classes")
  targets = np.array([classes.index(l) for l in labels], np.int32)
  audio_len = -(-max(len(a) for a in audios) // eval_data.SAMPLE_RATE) * eval_data.SAMPLE_RATE
  encoder_params = meta.unbox(params)
  # Pooled embeddings can differ between clips by a small fraction of their norm (a lightly trained
  # encoder); the head standardizes them as the linear probe does, with statistics of the training
  # clips under the starting encoder, and starts as logistic regression does: every class alike.
  pooled = eval_data.Encoder(model, encoder_params, batch_size=config.batch_size).speech(audios)
  head = {"kernel": jnp.zeros((pooled.shape[-1], len(classes)), jnp.float32),
          "bias": jnp.zeros((len(classes),), jnp.float32),
          "mean": jnp.asarray(pooled.mean(0), jnp.float32),
          "inv_std": jnp.asarray(1.0 / (pooled.std(0) + 1e-6), jnp.float32)}

  def sample_batch(rng):
    idx = rng.choice(len(audios), size=config.batch_size, replace=len(audios) < config.batch_size)
    audio, mask = eval_data.pad_audio([audios[i] for i in idx], len(idx), audio_len)
    return audio, mask, targets[idx]

  def loss_fn(p, batch):
    audio, mask, y = batch
    _, _, pooled = model.encode_speech(p["encoder"], audio, mask)
    return optax.softmax_cross_entropy_with_integer_labels(_classifier_logits(p["head"], pooled), y).mean()

  tuned, losses = _train(loss_fn, encoder_params, head, config, sample_batch, "finetune-classifier")
  return FinetunedClassifier(model, tuned, classes, losses, config.batch_size)


@base.register("langid_finetune")
@gin.configurable
class LangIDFinetuneEvaluator:
  """Spoken language ID by a fine-tuned classification head (vs. the frozen linear probe)."""

  def __init__(self, corpus_dir: str | None = None, stream: str = "speech", max_train_per_lang: int | None = 40,
               max_test_per_lang: int | None = 20, config: FinetuneConfig | None = None):
    self.corpus_dir = corpus_dir
    self.stream = stream
    self.max_train_per_lang, self.max_test_per_lang = max_train_per_lang, max_test_per_lang
    self.config = config or FinetuneConfig()

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    from sklearn.metrics import f1_score  # pylint: disable=g-import-not-at-top
    corpus_dir = ctx.corpus(self.corpus_dir, type(self).__name__)
    train = eval_data.read_utterances(corpus_dir, self.stream, "train", max_per_lang=self.max_train_per_lang)
    test = eval_data.read_utterances(corpus_dir, self.stream, "test", max_per_lang=self.max_test_per_lang)
    train = [u for u in train if len(u.audio)]
    test = [u for u in test if len(u.audio)]
    clf = finetune_classifier(ctx.model, ctx.params, [u.audio for u in train], [u.lang for u in train], self.config)
    predicted = clf.predict([u.audio for u in test])
    truth = [u.lang for u in test]
    return {"langid_finetune_accuracy_speech": float(np.mean(np.array(predicted) == np.array(truth))),
            "langid_finetune_macro_f1_speech": float(f1_score(truth, predicted, average="macro", zero_division=0))}
