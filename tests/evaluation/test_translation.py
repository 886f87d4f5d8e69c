"""Translation scoring (sacrebleu BLEU / chrF, baseline, held-out languages apart), the evaluator's
bookkeeping, the XTREME-S-style table and the BLEU plot."""
import json
import os
import shutil

import numpy as np
import pytest

from mslam_jax.data import espeak
from mslam_jax.data import translation as translation_data
from mslam_jax.data.vocabularies import EOS_ID
from mslam_jax.evaluation import base
from mslam_jax.evaluation import translation
from mslam_jax.evaluation import xtreme_table


def _item(lang, target, text="x"):
  return translation_data.Item(id=f"{lang}-{target}", lang=lang, key="k", text=text, target=target)


def test_corpus_scores():
  refs = ["March 4, 1987", "Friday", "France, Spain, and Peru"]
  perfect = translation.corpus_scores(refs, refs)
  assert perfect == {"bleu": pytest.approx(100.0), "chrf": pytest.approx(100.0)}
  partial = translation.corpus_scores(["March 5, 1987", "Friday", "France and Peru"], refs)
  wrong = translation.corpus_scores(["Tuesday"] * 3, refs)
  assert 0 <= wrong["bleu"] < partial["bleu"] < 100 and wrong["chrf"] < partial["chrf"] < 100
  with pytest.raises(ValueError, match="2 hypotheses for 3 references"):
    translation.corpus_scores(refs[:2], refs)


def test_held_out_languages_are_scored_apart_with_the_baseline():
  items = [_item("deu", "March 4, 1987"), _item("deu", "Friday"), _item("deu", "Friday"),
           _item("ukr", "Austria, Sweden, and Kazakhstan"), _item("ukr", "Southern Altai")]
  assert translation.most_frequent_target(items) == "Friday"
  hypotheses = ["March 4, 1987", "Friday", "Friday", "Monday", "Monday"]
  metrics = translation.score_groups(items, hypotheses, held_out=["ukr"], baseline="Friday")
  assert metrics["translation_bleu"] == pytest.approx(100.0)
  assert metrics["translation_bleu_heldout"] < 1.0
  assert metrics["translation_bleu_baseline"] < metrics["translation_bleu"]
  assert metrics["translation_chrf_heldout_baseline"] < 20
  assert metrics["translation_bleu/deu"] == pytest.approx(100.0) and metrics["translation_bleu/ukr"] < 1.0


def test_paired_bootstrap_tells_a_real_gain_over_the_baseline_from_none():
  months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October"]
  refs = [f"{m} {d}, 19{d + 50}" for m in months for d in range(1, 5)]  # 40 dates
  baseline = ["May 1, 1951"] * len(refs)
  good = [r if i % 3 else "June 9, 2001" for i, r in enumerate(refs)]  # two thirds exactly right
  gain = translation.against_baseline(good, baseline, refs, resamples=200)
  assert gain["bleu_p_value"] < 0.01 and gain["chrf_p_value"] < 0.01
  assert 0.0 < gain["bleu_ci95"] < 30.0
  one_more = list(baseline)
  one_more[7] = refs[7]  # one item of 40 right: a higher BLEU, but not one to claim
  slight = translation.against_baseline(one_more, baseline, refs, resamples=200)
  assert slight["bleu_p_value"] > 0.1 and slight["chrf_p_value"] > 0.1
  # score_groups carries them per group, next to the figures they qualify.
  items = [_item("deu", r) for r in refs] + [_item("ukr", r) for r in refs[:6]]
  metrics = translation.score_groups(items, good + refs[:6], held_out=["ukr"], baseline=baseline[0])
  assert metrics["translation_bleu_p_value"] == pytest.approx(
      translation.against_baseline(good, baseline, refs)["bleu_p_value"])
  assert {"translation_bleu_heldout_ci95", "translation_chrf_heldout_p_value"} <= set(metrics)


class _OracleModel:
  """Knows each item's reference by its audio (or source text): checks that the evaluator hands
  every hypothesis back to its own item across length-sorted, padded, bucketed batches."""

  def __init__(self, items, vocabulary, width=96):
    self.by_audio = {np.asarray(x.audio[:800]).tobytes(): x.target for x in items}
    self.by_text = {tuple(vocabulary.encode(x.text)): x.target for x in items}
    self.vocabulary, self.width, self.calls = vocabulary, width, []

  def _rows(self, targets):
    out = np.zeros((len(targets), self.width), np.int32)
    for i, t in enumerate(targets):
      ids = list(self.vocabulary.encode(t)) + [EOS_ID]
      out[i, :len(ids)] = ids
    return out

  def translate_speech(self, params, audio, audio_mask, beam_size=None, max_length=None):
    del params, beam_size, max_length
    self.calls.append(audio.shape)
    return self._rows([self.by_audio[np.asarray(row[:800], np.float32).tobytes()] for row in audio])

  def translate_text(self, params, tokens, tokens_mask, beam_size=None, max_length=None):
    del params, beam_size, max_length
    return self._rows([self.by_text[tuple(int(t) for t, m in zip(row, mrow) if m)]
                       for row, mrow in zip(tokens, tokens_mask)])


@pytest.fixture(scope="module")
def corpus(builtin_corpus_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("translation_eval_corpus"))
  shutil.copy(os.path.join(builtin_corpus_dir, "manifest.json"), out)
  shutil.copytree(os.path.join(builtin_corpus_dir, "vocab"), os.path.join(out, "vocab"))
  translation_data.build_translation_data(out, per_language=10, progress=False, synthesize=espeak.synthesize)
  return out


def test_evaluator_maps_hypotheses_back_to_their_items(corpus, tmp_path):
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  vocab = eval_data.load_vocabulary(corpus)
  items = translation_data.read_items(corpus, "test")
  model = _OracleModel(items, vocab)
  evaluator = translation.TranslationEvaluator(corpus_dir=corpus, streams=("speech", "text"), batch_size=3)
  metrics = evaluator.evaluate(base.EvalContext(model=model, params=None, step=7, out_dir=str(tmp_path)))
  # The oracle's answers round-trip through the vocabulary: what BLEU must be if nothing is mixed up.
  roundtrip = lambda t: vocab.decode(list(vocab.encode(t)))
  held = set(translation_data.read_manifest(corpus)["held_out_languages"])
  train_items = [x for x in items if x.lang not in held]
  expected = translation.corpus_scores([roundtrip(x.target) for x in train_items], [x.target for x in train_items])
  assert metrics["translation_bleu"] == pytest.approx(expected["bleu"])
  assert metrics["translation_text_bleu"] == pytest.approx(expected["bleu"])
  assert metrics["translation_bleu"] > 60 > metrics["translation_bleu_baseline"]
  assert {"translation_bleu_heldout", "translation_chrf_heldout_baseline", "translation_bleu/ukr"} <= set(metrics)
  assert all(shape[0] == 3 for shape in model.calls)  # fixed batch size, a few audio buckets
  assert len({shape for shape in model.calls}) <= 3 and all(s[1] % 16000 == 0 for s in model.calls)
  with open(tmp_path / "translations.jsonl", encoding="utf-8") as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 2 * len(items) and {r["stream"] for r in rows} == {"speech", "text"}
  assert all(r["hypothesis"] == roundtrip(r["reference"]) for r in rows)


def test_evaluator_rejects_bad_settings_and_a_pretraining_model(corpus):
  with pytest.raises(ValueError, match="split"):
    translation.TranslationEvaluator(corpus_dir=corpus, split="train")
  with pytest.raises(ValueError, match="streams"):
    translation.TranslationEvaluator(corpus_dir=corpus, streams=("paired",))
  with pytest.raises(ValueError, match="TranslationModel"):
    translation.TranslationEvaluator(corpus_dir=corpus).evaluate(base.EvalContext(model=object(), params=None, step=0))


def test_xtreme_table_rows_and_markdown():
  metrics = {"translation_bleu": 12.5, "translation_bleu_baseline": 0.4, "translation_bleu_heldout": float("nan"),
             "ctc_cer": 0.55, "langid_accuracy_speech": 0.43, "langid_chance_speech": 0.1}
  rows = xtreme_table.xtreme_rows(metrics)
  assert [(r.task, r.metric) for r in rows] == [
      ("built-in speech translation X->En", "BLEU"), ("built-in ASR (CTC fine-tuned)", "CER (%)"),
      ("built-in language ID (speech)", "accuracy (%)")]
  bleu, cer, langid = rows
  assert (bleu.ours, bleu.baseline, bleu.paper_600m, bleu.paper_2b) == (12.5, 0.4, 22.4, 24.8)
  assert cer.ours == pytest.approx(55.0) and cer.paper_600m is None
  assert langid.ours == pytest.approx(43.0) and langid.baseline == pytest.approx(10.0)
  assert (langid.paper_600m, langid.paper_2b) == (73.3, 77.7)
  table = xtreme_table.markdown_table(rows)
  assert "| built-in speech translation X->En | BLEU | 12.5 | 0.4 | CoVoST 2 X->En (21 languages) (BLEU) | 22.4 | 24.8 |" in table
  assert json.loads(json.dumps(xtreme_table.rows_as_dicts(rows)))[0]["ours"] == 12.5
  assert xtreme_table.markdown_table([]) == ""


def test_xtreme_table_lists_the_benchmarks_own_tasks_next_to_the_paper():
  metrics = {"covost2_ast_bleu": 3.5, "covost2_ast_bleu_baseline": 0.2, "mls_asr_wer": 0.8, "fleurs_asr_cer": 0.3,
             "minds14_intent_accuracy": 0.25, "ctc_cer": 0.5}
  rows = {r.task + " " + r.metric: r for r in xtreme_table.xtreme_rows(metrics)}
  assert set(rows) == {"built-in ASR (CTC fine-tuned) CER (%)", "XTREME-S CoVoST 2 X->En BLEU",
                       "XTREME-S FLEURS ASR CER (%)", "XTREME-S MLS ASR WER (%)",
                       "XTREME-S MINDS-14 intent accuracy (%)"}
  covost = rows["XTREME-S CoVoST 2 X->En BLEU"]
  assert (covost.ours, covost.baseline, covost.paper_2b) == (3.5, 0.2, 24.8)
  assert rows["XTREME-S MLS ASR WER (%)"].ours == pytest.approx(80.0)
  assert rows["XTREME-S MLS ASR WER (%)"].paper_600m == 10.1
  assert rows["XTREME-S MINDS-14 intent accuracy (%)"].paper_600m == 86.9


def test_bleu_plot(tmp_path):
  path = translation.plot_bleu_over_steps(str(tmp_path / "plots" / "bleu.png"),
                                          {"speech": [(100, 2.0), (0, 0.1)], "speech+text": [(0, 0.1), (100, 4.0)]},
                                          baseline=0.5)
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval_reports_carry_the_xtreme_table(tmp_path):
  from mslam_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  with_tasks = {"ctc_cer": 0.5, "ctc_wer": 0.9, "translation_bleu": 3.25, "translation_bleu_baseline": 0.0,
                "retrieval_r1_speech_to_text": 0.2}
  report.write_checkpoint_report(str(tmp_path / "step_20"), 20, with_tasks)
  checkpoint_md = (tmp_path / "step_20" / "report.md").read_text()
  assert "## XTREME-S-style table" in checkpoint_md
  assert "| built-in speech translation X->En | BLEU | 3.2 | 0.0 | CoVoST 2 X->En (21 languages) (BLEU) | 22.4 | 24.8 |" \
      in checkpoint_md
  assert "| built-in ASR (CTC fine-tuned) | WER (%) | 90.0 |  | VoxPopuli ASR (WER) | 9.2 | 9.1 |" in checkpoint_md
  # The sweep's report shows its latest step's table; a report without any downstream task, none.
  report.write_sweep_report(str(tmp_path), {10: {"ctc_cer": 0.8}, 20: with_tasks})
  sweep_md = (tmp_path / "report.md").read_text()
  assert "## XTREME-S-style table (step 20)" in sweep_md and "| 3.2 |" in sweep_md and "| 80.0 |" not in sweep_md
  report.write_checkpoint_report(str(tmp_path / "step_30"), 30, {"retrieval_r1_speech_to_text": 0.2})
  assert "XTREME-S" not in (tmp_path / "step_30" / "report.md").read_text()


def test_demo_draws_bleu_over_the_evaluated_fine_tuning_steps(tmp_path):
  from mslam_jax.commands import demo  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import report  # pylint: disable=g-import-not-at-top
  run = tmp_path / "translation"
  out = str(tmp_path / "bleu.png")
  report.write_checkpoint_report(str(run / "eval" / "step_100"), 100, {"translation_bleu": 0.5,
                                                                      "translation_bleu_baseline": 0.1})
  assert demo.bleu_over_steps(str(run), out) is None  # one evaluated step is no curve
  # A failed evaluation does not count; two good ones make the curve.
  report.write_checkpoint_report(str(run / "eval" / "step_150"), 150, {"translation_bleu": 9.0}, failed=["translation"])
  assert demo.bleu_over_steps(str(run), out) is None
  report.write_checkpoint_report(str(run / "eval" / "step_200"), 200, {"translation_bleu": 2.0,
                                                                      "translation_bleu_heldout": 1.0,
                                                                      "translation_bleu_baseline": 0.1})
  assert demo.bleu_over_steps(str(run), out) == out
  with open(out, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
