"""Evaluators that fine-tune a head on the checkpoint (through the fine-tuning job, cached in the
run directory): CTC ASR on the training languages, and spoken language ID by a classifier."""
import os
from typing import Sequence

import gin
import numpy as np

from mslam_jax import storage
from mslam_jax.evaluation import base
from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import finetune
from mslam_jax.evaluation import finetune_job


@base.register("ctc")
@gin.configurable
class CTCFinetuneEvaluator:
  """CTC fine-tuning on paired train data, CER/WER on paired test data of the same languages.

  `langs` defaults to the corpus' training languages (paired train data, not held out).
  `lm_order` > 0 adds ctc_cer_lm: beam search fused with a character n-gram LM of that order
  (finetune_job.ctc_language_models); 0 turns it off. With self-training over every language's
  untranscribed speech (SelfTrainingConfig.steps > 0, pool "all"), the student's figures follow as
  ctc_self_trained_*.
  """

  def __init__(self, corpus_dir: str | None = None, langs: Sequence[str] | None = None,
               max_train_per_lang: int | None = None, max_test_per_lang: int | None = 50,
               beam_size: int = 8, config: finetune.FinetuneConfig | None = None, lm_order: int = 6,
               self_training: finetune.SelfTrainingConfig | None = None):
    self.corpus_dir = corpus_dir
    self.langs = langs
    self.max_train_per_lang, self.max_test_per_lang = max_train_per_lang, max_test_per_lang
    self.beam_size = beam_size
    self.config = config or finetune.FinetuneConfig()
    self.lm_order = lm_order
    self.self_training = self_training or finetune.SelfTrainingConfig()

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    corpus_dir = ctx.corpus(self.corpus_dir, type(self).__name__)
    tuned = finetune_job.checkpoint_ctc_head(ctx, corpus_dir, self.langs, self.max_train_per_lang, self.config)
    langs = self.langs or eval_data.training_languages(corpus_dir)
    test = eval_data.read_utterances(corpus_dir, "paired", "test", langs, self.max_test_per_lang)
    lms = finetune_job.ctc_language_models(ctx, corpus_dir, tuned, langs, self.lm_order, beam_size=self.beam_size)
    metrics = finetune.ctc_metrics(tuned, test, "ctc", self.beam_size, lms)
    if self.self_training.pool == "all":  # the held-out pool's student is zero_shot's
      metrics.update(finetune_job.self_training_metrics(
          ctx, corpus_dir, tuned, lms, langs, self.max_train_per_lang, eval_data.held_out_languages(corpus_dir),
          test, "ctc", self.self_training, self.config, self.beam_size, self.lm_order))
    if ctx.out_dir:
      finetune._plot_losses(os.path.join(ctx.out_dir, "ctc_finetune_loss.png"), tuned.losses,  # pylint: disable=protected-access
                            f"CTC fine-tuning ({self.config.freeze}), step {ctx.step}")
    return metrics


@base.register("langid_finetune")
@gin.configurable
class LangIDFinetuneEvaluator:
  """Spoken language ID by a fine-tuned classification head (vs. the frozen linear probe)."""

  def __init__(self, corpus_dir: str | None = None, stream: str = "speech", max_train_per_lang: int | None = 40,
               max_test_per_lang: int | None = 20, config: finetune.FinetuneConfig | None = None):
    self.corpus_dir = corpus_dir
    self.stream = stream
    self.max_train_per_lang, self.max_test_per_lang = max_train_per_lang, max_test_per_lang
    self.config = config or finetune.FinetuneConfig()

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    from sklearn.metrics import f1_score  # pylint: disable=g-import-not-at-top
    corpus_dir = ctx.corpus(self.corpus_dir, type(self).__name__)
    train = eval_data.read_utterances(corpus_dir, self.stream, "train", max_per_lang=self.max_train_per_lang)
    test = eval_data.read_utterances(corpus_dir, self.stream, "test", max_per_lang=self.max_test_per_lang)
    train = [u for u in train if len(u.audio)]
    test = [u for u in test if len(u.audio)]
    key = {"corpus": storage.absolute(corpus_dir), "stream": self.stream, "max_per_lang": self.max_train_per_lang}
    clf = finetune_job.checkpoint_classifier(ctx, "langid", [u.audio for u in train], [u.lang for u in train],
                                             self.config, key)
    predicted = clf.predict([u.audio for u in test])
    truth = [u.lang for u in test]
    return {"langid_finetune_accuracy_speech": float(np.mean(np.array(predicted) == np.array(truth))),
            "langid_finetune_macro_f1_speech": float(f1_score(truth, predicted, average="macro", zero_division=0))}
