"""Translation evaluation: sacrebleu corpus BLEU and chrF of a TranslationModel on the built-in
X -> English data (mslam_jax/data/translation.py), against a trivial baseline.

  TranslationEvaluator(corpus_dir).evaluate(model, params, step, out_dir=None) -> {
      "translation_bleu", "translation_chrf":                 training source languages, test split
      "translation_bleu_baseline", "translation_chrf_baseline": always the most frequent English
                                                              target of the training items
      "translation_bleu_heldout", "translation_chrf_heldout" (+ _baseline): held-out (zero-shot)
                                                              source languages, reported apart
      "translation_bleu_ci95", "translation_bleu_p_value", ... (+ _heldout): paired bootstrap
                                                              against the baseline (against_baseline)
      "translation_bleu/{lang}": per source language
      "translation_text_bleu", ...: the same for text-to-text translation when `streams` has "text"}

`model` is a TranslationModel (models/translation.py) and `params` its (fine-tuned) parameters;
a pre-training checkpoint has no decoder, so evaluating one means fine-tuning first (the
`translate` fine-tuning task). `out_dir` gets translations.jsonl (every hypothesis) and
BLEU-over-steps plots come from `plot_bleu_over_steps`.
"""
import json
import logging
import os
from typing import Any, Mapping, Optional, Sequence

import gin
import numpy as np

from mslam_jax import storage
from mslam_jax.data import translation as translation_data
from mslam_jax.evaluation import base

METRIC_PREFIX = "translation"
AUDIO_BUCKET_SAMPLES = 16000


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """{"bleu", "chrf"}: sacrebleu corpus BLEU (13a tokenisation, exp smoothing) and chrF, 0-100."""
  import sacrebleu  # pylint: disable=g-import-not-at-top
  if len(hypotheses) != len(references):
    raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
  if not hypotheses:
    return {"bleu": float("nan"), "chrf": float("nan")}
  refs = [list(references)]
  return {"bleu": float(sacrebleu.corpus_bleu(list(hypotheses), refs).score),
          "chrf": float(sacrebleu.corpus_chrf(list(hypotheses), refs).score)}


def against_baseline(hypotheses: Sequence[str], baseline: Sequence[str], references: Sequence[str],
                     resamples: int = 1000) -> dict[str, float]:
  """Paired bootstrap resampling (Koehn 2004; sacrebleu's `--paired-bs`, seed 12345) of the
  hypotheses against the baseline's on the same items: {"bleu_ci95", "chrf_ci95"}, the half-width
  of each score's 95 % interval, and {"bleu_p_value", "chrf_p_value"}: sacrebleu's p-value that the
  two differ by chance (two-sided; the smallest reportable is 1 / (resamples + 1)). A gain over the
  baseline is real where the score is above the baseline's and its p-value is small.

  A built-in test split holds a few dozen items, so a BLEU of 3 may or may not be above chance:
  these say which.
  """
  from sacrebleu.metrics import BLEU, CHRF  # pylint: disable=g-import-not-at-top
  from sacrebleu.significance import PairedTest  # pylint: disable=g-import-not-at-top
  if not hypotheses:
    return {}
  test = PairedTest([("baseline", list(baseline)), ("system", list(hypotheses))],
                    {"bleu": BLEU(), "chrf": CHRF()}, [list(references)], test_type="bs", n_samples=resamples)
  _, results = test()
  out = {}
  for key, name in (("BLEU", "bleu"), ("chrF2", "chrf")):
    system = results[key][1]
    out[f"{name}_ci95"] = float(system.ci)
    out[f"{name}_p_value"] = float(system.p_value)
  return out


def most_frequent_target(items: Sequence[Any]) -> str:
  """The trivial baseline's one answer: the commonest target (first seen wins a tie)."""
  counts: dict[str, int] = {}
  for item in items:
    counts[item.target] = counts.get(item.target, 0) + 1
  return max(counts, key=counts.get) if counts else ""


def _bucket(length: int, unit: int) -> int:
  """`unit` times the next power of two: few distinct shapes (compiles), at most 2x padding."""
  units = max(1, -(-length // unit))
  return unit * (1 << (units - 1).bit_length())


def translate_items(model: Any, params: Any, items: Sequence[Any], vocabulary: Any, stream: str = "speech",
                    batch_size: int = 16, beam_size: Optional[int] = None,
                    max_length: Optional[int] = None) -> list[str]:
  """Hypotheses for items (translation_data.Item), in their order. Items are batched by length
  with padded shapes from a few buckets, so a whole test set costs a handful of compiles."""
  from mslam_jax.models import translation as translation_model  # pylint: disable=g-import-not-at-top
  if not items:
    return []
  lengths = [len(x.audio) if stream == "speech" else len(vocabulary.encode(x.text)) for x in items]
  order = np.argsort(lengths, kind="stable")
  out: list[Optional[str]] = [None] * len(items)
  for start in range(0, len(items), batch_size):
    index = order[start:start + batch_size]
    chunk = [items[i] for i in index]
    chunk += [chunk[-1]] * (batch_size - len(chunk))  # a fixed batch size: one shape per bucket
    longest = max(lengths[i] for i in index)
    if stream == "speech":
      batch = translation_data.make_batch(chunk, vocabulary, "speech", 1,
                                          audio_samples=_bucket(longest, AUDIO_BUCKET_SAMPLES))
      tokens = model.translate_speech(params, batch["audio"], batch["audio_mask"], beam_size=beam_size,
                                      max_length=max_length)
    else:
      batch = translation_data.make_batch(chunk, vocabulary, "text", 1, text_length=_bucket(longest, 16))
      tokens = model.translate_text(params, batch["tokens"], batch["tokens_mask"], beam_size=beam_size,
                                    max_length=max_length)
    for i, text in zip(index, translation_model.decode_tokens(vocabulary, tokens)):
      out[i] = text
  return out  # type: ignore[return-value]


def score_groups(items: Sequence[Any], hypotheses: Sequence[str], held_out: Sequence[str], baseline: str,
                 prefix: str = METRIC_PREFIX) -> dict[str, float]:
  """BLEU/chrF of the training-language items and of the held-out ones (apart), each with the
  baseline's and a paired bootstrap against it, and BLEU per source language."""
  metrics = {}
  held = set(held_out)
  groups = {"": [i for i, x in enumerate(items) if x.lang not in held],
            "_heldout": [i for i, x in enumerate(items) if x.lang in held]}
  for suffix, index in groups.items():
    if not index:
      continue
    refs = [items[i].target for i in index]
    for name, value in corpus_scores([hypotheses[i] for i in index], refs).items():
      metrics[f"{prefix}_{name}{suffix}"] = value
    for name, value in corpus_scores([baseline] * len(index), refs).items():
      metrics[f"{prefix}_{name}{suffix}_baseline"] = value
    for name, value in against_baseline([hypotheses[i] for i in index], [baseline] * len(index), refs).items():
      metrics[f"{prefix}_{name.replace('_', suffix + '_', 1)}"] = value
  for lang in sorted({x.lang for x in items}):
    index = [i for i, x in enumerate(items) if x.lang == lang]
    metrics[f"{prefix}_bleu/{lang}"] = corpus_scores([hypotheses[i] for i in index],
                                                     [items[i].target for i in index])["bleu"]
  return metrics


@base.register("translation")
@gin.configurable
class TranslationEvaluator:
  """BLEU and chrF of a TranslationModel on the built-in translation data's `split`.

  Args:
    corpus_dir: a built-in corpus with translation data (default: the CORPUS_DIR macro).
    split: "test" (or "validation" for model selection).
    streams: "speech" (speech translation) and/or "text" (text-to-text through the shared layers).
    max_per_lang: items per source language (None: all).
    beam_size / max_length: decoding (default: the model's).
    batch_size: hypotheses decoded at once.
  """

  def __init__(self, corpus_dir: Optional[str] = None, split: str = "test", streams: Sequence[str] = ("speech",),
               max_per_lang: Optional[int] = None, beam_size: Optional[int] = None,
               max_length: Optional[int] = None, batch_size: int = 16):
    if split not in ("validation", "test"):
      raise ValueError(f"TranslationEvaluator.split must be 'validation' or 'test', got {split!r}")
    unknown = set(streams) - {"speech", "text"}
    if unknown or not streams:
      raise ValueError(f"TranslationEvaluator.streams must name 'speech' and/or 'text', got {list(streams)}")
    self.corpus_dir = corpus_dir
    self.split = split
    self.streams = tuple(streams)
    self.max_per_lang = max_per_lang
    self.beam_size = beam_size
    self.max_length = max_length
    self.batch_size = batch_size

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
    model, params, step, out_dir = ctx.model, ctx.params, ctx.step, ctx.out_dir
    if not hasattr(model, "translate_speech"):
      raise ValueError("the translation evaluator needs a TranslationModel (a fine-tuned `translate` run); "
                       f"got {type(model).__name__}")
    corpus_dir = ctx.corpus(self.corpus_dir, "TranslationEvaluator")
    manifest = translation_data.read_manifest(corpus_dir)
    if manifest is None:
      raise FileNotFoundError(f"no built-in translation data in {corpus_dir}: build it with "
                              "mslam_jax.data.translation.build_translation_data")
    vocabulary = eval_data.load_vocabulary(corpus_dir)
    items = translation_data.read_items(corpus_dir, self.split, max_per_lang=self.max_per_lang)
    baseline = manifest.get("most_frequent_target") or most_frequent_target(
        translation_data.read_items(corpus_dir, "train"))
    held_out = manifest.get("held_out_languages", [])
    metrics, rows = {}, []
    for stream in self.streams:
      prefix = METRIC_PREFIX if stream == "speech" else f"{METRIC_PREFIX}_text"
      hypotheses = translate_items(model, params, items, vocabulary, stream, self.batch_size, self.beam_size,
                                   self.max_length)
      metrics.update(score_groups(items, hypotheses, held_out, baseline, prefix))
      rows += [{"stream": stream, "id": x.id, "lang": x.lang, "key": x.key, "source": x.text, "reference": x.target,
                "hypothesis": h} for x, h in zip(items, hypotheses)]
    logging.info("translation at step %d: BLEU %.2f (baseline %.2f), held-out %.2f", step,
                 metrics.get(f"{METRIC_PREFIX}_bleu", float("nan")),
                 metrics.get(f"{METRIC_PREFIX}_bleu_baseline", float("nan")),
                 metrics.get(f"{METRIC_PREFIX}_bleu_heldout", float("nan")))
    if out_dir:
      storage.write_text(os.path.join(out_dir, "translations.jsonl"),
                         "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return metrics


def plot_bleu_over_steps(path: str, curves: Mapping[str, Sequence[tuple[int, float]]],
                         baseline: Optional[float] = None, title: str = "BLEU over fine-tuning steps") -> str:
  """A line per curve ({label: [(step, bleu), ...]}, e.g. speech-only vs speech + text fine-tuning),
  and the trivial baseline as a dashed line; written to `path` (PNG)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for label, points in curves.items():
    points = sorted(points)
    ax.plot([s for s, _ in points], [b for _, b in points], marker="o", label=label)
  if baseline is not None:
    ax.axhline(baseline, linestyle="--", color="gray", label="most frequent target")
  ax.set_xlabel("fine-tuning step")
  ax.set_ylabel("corpus BLEU")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=100)
  plt.close(fig)
  return path
