"""Zero-shot cross-lingual ASR: CTC fine-tuned on the training languages, scored on held-out ones.

The held-out languages are those the corpus manifest marks (their paired data never enters
pre-training nor fine-tuning). The fine-tuned head is the one the "ctc" evaluator trains on the
same checkpoint (shared, so a sweep running both trains it once).

With self-training on (`SelfTrainingConfig.steps`), the head then transcribes the held-out
languages' untranscribed speech (the speech stream's train split) with each language's character
LM, trains on over those transcripts and its own training data, and is scored again, as
zero_shot_self_trained_*. No transcribed speech of a held-out language enters at any point, so
it stays zero-shot ASR.

The speech-only ablation is the same evaluator run on a model pre-trained without the text and
paired objectives at the same step budget; `mslam eval --ablation_model_dir` (or
`eval.sweep(..., ablation_model_dir=...)`) scores it under its own run config and reports its
figures with the suffix `_speech_only_ablation`, so one report shows what joint pre-training buys.
"""
from typing import Sequence

import gin

from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import finetune
from mslam_jax.evaluation import finetune_job
from mslam_jax.evaluation import base

ABLATION_SUFFIX = "_speech_only_ablation"
# The zero-shot head's figures on the training languages' test clips. A joint model's head that is
# better on the held-out languages may only be better on every language: the two gains side by
# side tell transfer from in-domain skill (benchmarks/README.md, fifty-first pass).
SEEN_PREFIX = "zero_shot_seen"

# gin bindings that turn a pre-training run into the speech-only ablation: every objective that
# reads text (text MLM, text CTC, TLM, CTC, consistency, the cross-modal losses) is off and the
# text and paired streams are not read at all; the speech objectives, the speech batch and the
# step budget stay as they are.
# E.g. `mslam train ... $(printf -- "--gin.%s " "${SPEECH_ONLY_BINDINGS[@]}")`.
SPEECH_ONLY_BINDINGS = (
    "ObjectiveWeights.text_mlm = 0.0",
    "ObjectiveWeights.tlm = 0.0",
    "ObjectiveWeights.ctc = 0.0",
    "ObjectiveWeights.cross_modal = 0.0",
    "ObjectiveWeights.local_cross_modal = 0.0",
    "ObjectiveWeights.text_ctc = 0.0",
    "ObjectiveWeights.consistency = 0.0",
    "ObjectiveWeights.phone_ctc = 0.0",
    "TEXT_BATCH = 0",
    "PAIRED_BATCH = 0",
)


@base.register("zero_shot")
@gin.configurable
class ZeroShotEvaluator:
  """CER/WER on the held-out languages' paired test data of a CTC head trained without them."""

  def __init__(self, corpus_dir: str | None = None, held_out_langs: Sequence[str] | None = None,
               train_langs: Sequence[str] | None = None, max_train_per_lang: int | None = None,
               max_test_per_lang: int | None = 50, beam_size: int = 8, lm_order: int = 6,
               self_training: finetune.SelfTrainingConfig | None = None, score_seen: bool = True):
    """`self_training`: its rounds after the head is fine-tuned (default: SelfTrainingConfig() from gin).
    `score_seen`: also score the same head, greedy, on the training languages' test clips
    (zero_shot_seen_cer): the in-domain error that the held-out CER is read against."""
    self.corpus_dir = corpus_dir
    self.score_seen = score_seen
    self.self_training = self_training or finetune.SelfTrainingConfig()
    self.lm_order = lm_order
    self.held_out_langs, self.train_langs = held_out_langs, train_langs
    self.max_train_per_lang, self.max_test_per_lang, self.beam_size = max_train_per_lang, max_test_per_lang, beam_size

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    corpus_dir = ctx.corpus(self.corpus_dir, type(self).__name__)
    held_out = list(self.held_out_langs or eval_data.held_out_languages(corpus_dir))
    if not held_out:
      raise ValueError(f"{corpus_dir}/manifest.json names no held-out languages; set "
                       "ZeroShotEvaluator.held_out_langs in gin")
    train_langs = self.train_langs or [l for l in eval_data.training_languages(corpus_dir) if l not in held_out]
    tuned = finetune_job.checkpoint_ctc_head(ctx, corpus_dir, train_langs, self.max_train_per_lang,
                                             finetune.FinetuneConfig())
    test = eval_data.read_utterances(corpus_dir, "paired", "test", held_out, self.max_test_per_lang)
    # The fusion weights are tuned on the training languages' validation utterances; a held-out
    # language is decoded with the LM of its train text (text is what it has; never its speech).
    lms = finetune_job.ctc_language_models(ctx, corpus_dir, tuned, train_langs, self.lm_order,
                                           beam_size=self.beam_size)
    metrics = finetune.ctc_metrics(tuned, test, "zero_shot", self.beam_size, lms)
    metrics["zero_shot_num_languages"] = float(len(held_out))
    if self.score_seen:
      seen = eval_data.read_utterances(corpus_dir, "paired", "test", train_langs, self.max_test_per_lang)
      scored = finetune.ctc_metrics(tuned, seen, SEEN_PREFIX, beam_size=None)
      metrics.update({k: v for k, v in scored.items()  # greedy CER and WER, overall and per language
                      if k.split("/")[0] in (f"{SEEN_PREFIX}_cer", f"{SEEN_PREFIX}_wer")})
    metrics.update(finetune_job.self_training_metrics(
        ctx, corpus_dir, tuned, lms, train_langs, self.max_train_per_lang, held_out, test, "zero_shot",
        self.self_training, finetune.FinetuneConfig(), self.beam_size, self.lm_order))
    return metrics


def as_ablation(metrics: dict[str, float]) -> dict[str, float]:
  """Renames an ablation run's metrics: zero_shot_cer -> zero_shot_cer_speech_only_ablation, ..."""
  out = {}
  for key, value in metrics.items():
    head, sep, tail = key.partition("/")
    out[f"{head}{ABLATION_SUFFIX}{sep}{tail}"] = value
  return out
