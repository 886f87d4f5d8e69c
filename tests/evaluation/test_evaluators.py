"""Evaluators end to end on a synthetic corpus whose audio spells its text (see synthetic.py)."""
import dataclasses
import json
import math
import os
import pathlib
import shutil

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mslam_jax.evaluation import alignment, base, downstream, finetune, finetune_job, registry, zero_shot
from mslam_jax.evaluation import data as eval_data
from tests.evaluation import synthetic


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
  # A validation split: the CTC evaluators tune their LM fusion on it.
  return synthetic.write_corpus(str(tmp_path_factory.mktemp("synthetic_corpus")),
                                per_split={"train": 24, "validation": 6, "test": 8})


@pytest.fixture(scope="session")
def model_and_params(corpus):
  vocab = eval_data.load_vocabulary(corpus)
  model = synthetic.SpectralModel(dim=64, vocab_size=vocab.vocab_size)
  return model, model.init(jax.random.PRNGKey(0))


FAST = finetune.FinetuneConfig(steps=250, batch_size=8, learning_rate=1e-2, warmup_steps=10)


def test_reader_and_languages(corpus):
  assert eval_data.corpus_languages(corpus, "paired", "train") == ["aaa", "bbb", "ccc"]
  assert eval_data.held_out_languages(corpus) == ["ccc"]
  assert eval_data.training_languages(corpus) == ["aaa", "bbb"]
  utts = eval_data.read_utterances(corpus, "paired", "test", ["aaa"], max_per_lang=3)
  assert len(utts) == 3 and all(u.lang == "aaa" and len(u.words) == len(u.text.split()) for u in utts)


def test_ctc_fine_tuning_with_text_reads_every_languages_train_text(corpus):
  vocab = eval_data.load_vocabulary(corpus)
  texts = eval_data.read_utterances(corpus, "text", "train")
  assert {u.lang for u in texts} == {"aaa", "bbb", "ccc"}  # the held-out language's text too
  examples = finetune_job._ctc_examples(corpus, ["aaa", "bbb"], None, vocab,  # pylint: disable=protected-access
                                        finetune.FinetuneConfig(text_ctc=0.5))
  assert {len(a) > 0 for a in examples.audios} == {True} and len(examples.texts) == len(texts)
  assert all(0 < len(t) <= examples.label_length and t.min() >= 5 for t in examples.texts)
  plain = finetune_job._ctc_examples(corpus, ["aaa", "bbb"], None, vocab, finetune.FinetuneConfig())  # pylint: disable=protected-access
  assert not plain.texts and len(plain.audios) == len(examples.audios)


def test_ctc_fine_tuning_text_can_be_limited_to_named_languages(corpus):
  vocab = eval_data.load_vocabulary(corpus)
  held_out = [u for u in eval_data.read_utterances(corpus, "text", "train") if u.lang == "ccc"]
  examples = finetune_job._ctc_examples(corpus, ["aaa", "bbb"], None, vocab,  # pylint: disable=protected-access
                                        finetune.FinetuneConfig(text_ctc=0.5, text_languages=("ccc",)))
  assert len(examples.texts) == len(held_out) > 0
  expected = [finetune.label_ids(vocab, u.text)[:examples.label_length] for u in held_out]
  assert [t.tolist() for t in examples.texts] == expected
  with pytest.raises(ValueError, match="text_languages names \\['zzz'\\]"):
    finetune_job._ctc_examples(corpus, ["aaa", "bbb"], None, vocab,  # pylint: disable=protected-access
                               finetune.FinetuneConfig(text_ctc=0.5, text_languages=("zzz",)))


@pytest.mark.parametrize("scanned", [False, True])
def test_gradient_masks(scanned):
  model = synthetic.SpectralModel(dim=4, vocab_size=8, num_layers=3, scanned=scanned)
  params = model.init(jax.random.PRNGKey(0))
  frozen = finetune.gradient_masks(params, finetune.FinetuneConfig(freeze="frozen"))
  assert all(m == 0.0 for m in jax.tree.leaves(frozen))
  everything = finetune.gradient_masks(params, finetune.FinetuneConfig(freeze="all"))
  assert all(m == 1.0 for m in jax.tree.leaves(everything))
  top = finetune.gradient_masks(params, finetune.FinetuneConfig(freeze="top_k", top_k=1))
  assert finetune.count_trainable(params, top) == 16  # one 4x4 layer
  assert top["frontend"]["kernel"] == 0.0
  if scanned:
    np.testing.assert_array_equal(top["shared"]["layers"]["kernel"].ravel(), [0, 0, 1])
  else:
    assert [top["shared"][f"layers_{i}"]["kernel"] for i in range(3)] == [0.0, 0.0, 1.0]
  with pytest.raises(ValueError, match="top_stack"):
    finetune.gradient_masks(params, finetune.FinetuneConfig(freeze="top_k", top_stack="nothing_like_this"))
  with pytest.raises(ValueError, match="freeze"):
    finetune.FinetuneConfig(freeze="some")


@pytest.mark.parametrize("scanned", [False, True])
def test_freezing_choices_change_only_what_they_should(corpus, scanned, tmp_path):
  model = synthetic.SpectralModel(dim=8, vocab_size=8, scanned=scanned)
  params = model.init(jax.random.PRNGKey(1))
  utts = eval_data.read_utterances(corpus, "speech", "train", ["aaa", "bbb"], max_per_lang=4)
  audios, labels = [u.audio for u in utts], [u.lang for u in utts]

  def changed(config):
    ctx = base.EvalContext(model, params, 0, model_dir=str(tmp_path))
    tuned = finetune_job.checkpoint_classifier(ctx, "clf", audios, labels, config, {})
    assert tuned.classes == ["aaa", "bbb"]
    return jax.tree.map(lambda a, b: np.abs(np.asarray(a) - np.asarray(b)).reshape(np.shape(a)[0], -1).max(-1)
                        if scanned and np.ndim(a) == 3 else float(np.abs(np.asarray(a) - np.asarray(b)).max()),
                        tuned.params["encoder"], params)

  # 3 steps: the classifier head starts at zero (logistic regression), so the encoder first gets a
  # gradient once the head has moved.
  fast = dict(steps=3, batch_size=4, warmup_steps=1, learning_rate=1e-2, encoder_learning_rate=1e-2)
  top = changed(finetune.FinetuneConfig(freeze="top_k", top_k=1, **fast))
  assert top["frontend"]["kernel"] == 0 and top["text_embed"]["embedding"] == 0
  if scanned:
    rows = top["shared"]["layers"]["kernel"]
    assert rows[0] == 0 and rows[1] == 0 and rows[2] > 0
    return
  assert top["shared"]["layers_1"]["kernel"] == 0 and top["shared"]["layers_2"]["kernel"] > 0
  # (freeze="all" trains every leaf through the same path as the top layer here; its masks are
  # checked in test_gradient_masks.)
  frozen = changed(finetune.FinetuneConfig(freeze="frozen", **fast))
  assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(frozen))


class _OffsetModel:
  """Pooled embedding = a large constant + 1e-3 x the clip's mean level: two languages of different
  loudness differ by a tiny fraction of the norm, as a lightly trained encoder's clips do."""

  def init(self, rng, batch=None):
    del batch
    return {"offset": 100.0 * jax.random.normal(rng, (8,)), "direction": jnp.ones((8,))}

  def encode_speech(self, params, audio, mask):
    level = jnp.sum(jnp.abs(audio) * mask, -1) / jnp.maximum(jnp.sum(mask, -1), 1)
    pooled = params["offset"] + 1e-3 * level[:, None] * params["direction"]
    return pooled[:, None, :], jnp.ones(audio.shape[:1] + (1,), jnp.int32), pooled

  def encode_text(self, params, tokens, mask):
    raise NotImplementedError("speech only")


def test_classifier_head_separates_embeddings_that_differ_by_a_small_fraction(tmp_path):
  rng = np.random.default_rng(0)
  audios = [rng.standard_normal(4000).astype(np.float32) * (0.1 if i % 2 else 1.0) for i in range(32)]
  labels = ["quiet" if i % 2 else "loud" for i in range(32)]
  model = _OffsetModel()
  config = finetune.FinetuneConfig(freeze="frozen", steps=40, batch_size=8, warmup_steps=5, learning_rate=1e-2)
  ctx = base.EvalContext(model, model.init(jax.random.PRNGKey(0)), 0, model_dir=str(tmp_path))
  tuned = finetune_job.checkpoint_classifier(ctx, "loudness", audios, labels, config, {})
  assert tuned.predict(audios) == labels


def test_ctc_alignment_and_zero_shot_evaluators(corpus, model_and_params, monkeypatch, tmp_path):
  model, params = model_and_params
  with gin.unlock_config():
    gin.bind_parameter("FinetuneConfig.steps", FAST.steps)
    gin.bind_parameter("FinetuneConfig.learning_rate", FAST.learning_rate)
    gin.bind_parameter("FinetuneConfig.warmup_steps", FAST.warmup_steps)
  try:
    ctx = base.EvalContext(model, params, 7, corpus_dir=corpus, out_dir=str(tmp_path))
    ctc = downstream.CTCFinetuneEvaluator().evaluate(ctx)
    aligned_langs, align = [], alignment.align_utterances
    monkeypatch.setattr(alignment, "align_utterances", lambda tuned, audios, texts, offsets=None, langs=None: (
        aligned_langs.append(langs) or align(tuned, audios, texts, offsets, langs)))
    aligned = alignment.AlignmentEvaluator().evaluate(ctx)
    zs = zero_shot.ZeroShotEvaluator().evaluate(ctx)
  finally:
    gin.clear_config()
  # The alignment evaluator gives the head each clip's language, as fine-tuning did (calibration, test).
  assert len(aligned_langs) == 2 and all(langs and set(langs) <= {"aaa", "bbb"} for langs in aligned_langs)
  # ctc and alignment share one fine-tuned head through the checkpoint's context (zero_shot's
  # training languages are the same here: the held-out one has no paired train data).
  assert len([k for k in ctx.shared if isinstance(k, tuple) and k[0] == "ctc_head"]) == 1
  # The audio spells the text: a linear CTC head on frozen features must get most characters right.
  assert ctc["ctc_cer"] < 0.25, ctc
  assert ctc["ctc_cer_beam"] <= ctc["ctc_cer"] + 0.05
  assert set(k for k in ctc if k.startswith("ctc_cer/")) == {"ctc_cer/aaa", "ctc_cer/bbb"}
  assert ctc["ctc_final_train_loss"] < 1.0
  # Beam search fused with a character LM of the train text, its weights tuned on validation once
  # (saved beside the head) and shared with zero_shot.
  assert ctc["ctc_cer_lm"] < 0.25 and set(k for k in ctc if k.startswith("ctc_cer_lm/")) == {"ctc_cer_lm/aaa", "ctc_cer_lm/bbb"}
  assert [k for k in ctx.shared if isinstance(k, tuple) and k[0] == "ctc_lm"] and "zero_shot_cer_lm" in zs
  head = next(v for k, v in ctx.shared.items() if isinstance(k, tuple) and k[0] == "ctc_head")
  # The head's directory is a fine-tuning directory like `mslam finetune`'s: its vocabulary beside it
  # (`mslam align --model_dir` reads it from there).
  assert eval_data.load_vocabulary(head.directory).vocab_size == head.vocab.vocab_size
  fusion = json.loads((pathlib.Path(head.directory) / finetune_job.fusion_file(6, 8)).read_text())
  assert fusion["num_validation"] > 0 and fusion["beam_size"] == 8 and (fusion["weight"], fusion["length_bonus"]) == (
      ctc["ctc_lm_weight"], ctc["ctc_lm_length_bonus"])
  assert os.path.exists(tmp_path / "ctc_finetune_loss.png")
  # Characters are 80 ms long and frames 40 ms: boundaries within about a frame.
  assert aligned["alignment_num_scored"] >= 12
  assert aligned["alignment_word_boundary_error_ms"] < 60, aligned
  assert aligned["alignment_word_boundary_error_ms"] < aligned["alignment_word_boundary_error_ms_uniform_baseline"]
  # The boundary offsets were fitted on training utterances and written for `mslam align --offsets`.
  assert aligned["alignment_num_calibration"] >= 12
  assert alignment.BoundaryOffsets.load(str(tmp_path / alignment.OFFSETS_FILE)) == alignment.BoundaryOffsets(
      round(aligned["alignment_offset_start_ms"], 1), round(aligned["alignment_offset_end_ms"], 1))
  grids = list(tmp_path.glob("alignment_*.TextGrid"))
  assert grids and grids[0].read_text().startswith('File type = "ooTextFile"')
  assert list(tmp_path.glob("alignment_*.png"))
  # Held-out "ccc" uses letters never seen in fine-tuning ("j"): worse than in-domain, but scored.
  assert set(k for k in zs if k.startswith("zero_shot_cer/")) == {"zero_shot_cer/ccc"}
  assert ctc["ctc_cer"] < zs["zero_shot_cer"] <= 1.5
  renamed = zero_shot.as_ablation(zs)
  assert "zero_shot_cer_speech_only_ablation" in renamed and "zero_shot_cer_speech_only_ablation/ccc" in renamed
  # The same head on the training languages' test clips: the ctc evaluator's head and clips here, so
  # its figures to the last digit; greedy only.
  assert zs["zero_shot_seen_cer"] == ctc["ctc_cer"] and zs["zero_shot_seen_wer"] == ctc["ctc_wer"]
  assert {k for k in zs if k.startswith("zero_shot_seen")} == {
      f"zero_shot_seen_{m}{lang}" for m in ("cer", "wer") for lang in ("", "/aaa", "/bbb")}
  assert "zero_shot_seen_cer_speech_only_ablation" in renamed


class _FixedLogProbs:
  """A stand-in fine-tuned head: fixed random log-probabilities for any clip, a directory to save in."""

  def __init__(self, vocab, directory):
    self.vocab, self.directory = vocab, directory

  def log_probs(self, audios, langs=None):
    del langs
    rs = np.random.RandomState(0)
    return [jax.nn.log_softmax(rs.randn(20, self.vocab.vocab_size) * 3.0) for _ in audios]


def test_ctc_metrics_without_a_beam_decode_only_greedy(corpus, monkeypatch, tmp_path):
  # beam_size None (the zero-shot head's greedy scoring on the training languages): no beam search runs.
  head = _FixedLogProbs(eval_data.load_vocabulary(corpus), str(tmp_path))
  head.batch_size, head.losses = 2, []
  clips = eval_data.read_utterances(corpus, "paired", "test", ["aaa", "bbb"], 2)
  beams, beam_decode = [], finetune.asr.beam_decode
  monkeypatch.setattr(finetune.asr, "beam_decode", lambda lp, width: beams.append(width) or beam_decode(lp, width))
  greedy = finetune.ctc_metrics(head, clips, "x", beam_size=None)
  assert not beams and not [k for k in greedy if "_beam" in k] and "x_cer/aaa" in greedy
  both = finetune.ctc_metrics(head, clips, "x", beam_size=2)
  assert beams and "x_cer_beam" in both and both["x_cer"] == greedy["x_cer"]
  with pytest.raises(ValueError, match="beam_size"):  # LM fusion needs a beam: refused before decoding
    finetune.ctc_metrics(head, clips, "x", beam_size=None, lms=object())


def test_lm_fusion_weights_are_tuned_and_kept_per_beam(corpus, monkeypatch, tmp_path):
  # The best fusion weights depend on the beam: a file tuned at one beam must not serve another.
  tunings = []
  tune = finetune_job.asr.tune_lm_fusion
  monkeypatch.setattr(finetune_job.asr, "tune_lm_fusion",
                      lambda lms, rows, vocab, beam_size: tunings.append(beam_size) or tune(
                          lms, rows, vocab, weights=(0.6,), length_bonuses=(1.5,), beam_size=beam_size))
  head = _FixedLogProbs(eval_data.load_vocabulary(corpus), str(tmp_path))
  for beam in (2, 4, 2):
    lms = finetune_job.ctc_language_models(None, corpus, head, ["aaa", "bbb"], order=3, max_tune_per_lang=2,
                                           beam_size=beam)
    saved = json.loads((tmp_path / finetune_job.fusion_file(3, beam)).read_text())
    assert saved["beam_size"] == beam and (lms.weight, lms.length_bonus) == (saved["weight"], saved["length_bonus"])
  assert tunings == [2, 4]  # the third call read beam 2's weights back


def test_zero_shot_self_training_learns_from_the_teachers_transcripts_only(corpus, model_and_params, tmp_path):
  model, params = model_and_params
  with gin.unlock_config():
    for name in ("steps", "learning_rate", "warmup_steps"):
      gin.bind_parameter(f"FinetuneConfig.{name}", getattr(FAST, name))
  try:
    ctx = base.EvalContext(model, params, 7, corpus_dir=corpus, out_dir=str(tmp_path))
    zs = zero_shot.ZeroShotEvaluator(self_training=finetune.SelfTrainingConfig(steps=150)).evaluate(ctx)
    # Every language's speech: the training languages' student is the ctc evaluator's, and shared.
    everyone = finetune.SelfTrainingConfig(steps=100, pool="all")
    ctc = downstream.CTCFinetuneEvaluator(self_training=everyone).evaluate(ctx)
    zs_all = zero_shot.ZeroShotEvaluator(self_training=everyone).evaluate(ctx)
    plain = downstream.CTCFinetuneEvaluator().evaluate(ctx)  # self-training is off by default
    two_rounds = zero_shot.ZeroShotEvaluator(self_training=finetune.SelfTrainingConfig(steps=150, rounds=2)).evaluate(ctx)
  finally:
    gin.clear_config()
  students = [v for k, v in ctx.shared.items() if isinstance(k, tuple) and k[0] == "ctc_self_training"]
  assert len(students) == 3  # the second round's first is the first evaluator's student, found again
  student, labelled = students[0]
  second = json.loads((pathlib.Path(students[2][0].directory) / finetune_job.SOURCE_FILE).read_text())
  assert second["teacher"] == student.directory and two_rounds["zero_shot_self_trained_cer"] < zs["zero_shot_cer"]
  # Held-out "ccc" writes "j", which no training language has: the teacher never emits it, so
  # transcripts with a "j" would mean the clips' stored text leaked into self-training.
  stored = {u.id: u.text for u in eval_data.read_utterances(corpus, "speech", "train", ["ccc"])}
  assert set(u.id for u in labelled) <= set(stored) and len(labelled) == zs["zero_shot_pseudo_labelled"] > 0
  assert any("j" in stored[u.id] for u in labelled) and not any("j" in u.text for u in labelled)
  rows = [json.loads(line) for line in (pathlib.Path(student.directory) / finetune_job.PSEUDO_LABELS_FILE)
          .read_text().splitlines()]
  assert [(r["id"], r["text"]) for r in rows] == [(u.id, u.text) for u in labelled]
  assert len(finetune_job.losses(student.directory)) == 150
  # The teacher's LM-fused transcripts beat its greedy ones (ccc's hum is one fine-tuning never
  # heard); the student trained on them closes much of that gap on the held-out test set.
  assert zs["zero_shot_pseudo_label_cer"] < zs["zero_shot_cer"] - 0.15, zs
  assert zs["zero_shot_self_trained_cer"] < zs["zero_shot_cer"] - 0.1, zs
  assert "zero_shot_self_trained_cer_lm" in zs and "zero_shot_self_trained_cer/ccc" in zs
  assert {u.lang for u in students[1][1]} == {"aaa", "bbb", "ccc"}
  assert ctc["ctc_self_trained_cer"] <= ctc["ctc_cer"] + 0.05, ctc
  assert zs_all["zero_shot_pseudo_labelled"] == ctc["ctc_pseudo_labelled"] == len(students[1][1])
  assert "ctc_self_trained_cer" not in plain and plain["ctc_cer"] == ctc["ctc_cer"]


def test_self_training_config_is_checked_and_makes_the_students_settings():
  with pytest.raises(ValueError, match="pool"):
    finetune.SelfTrainingConfig(steps=10, pool="training")
  with pytest.raises(ValueError, match="rounds"):
    finetune.SelfTrainingConfig(steps=10, rounds=0)
  with pytest.raises(ValueError, match="share"):
    finetune.SelfTrainingConfig(steps=10, share=1.0)
  student = finetune.SelfTrainingConfig(steps=40, learning_rate=1e-3).student(
      finetune.FinetuneConfig(steps=300, encoder_lr_multiplier=0.1, freeze="all", batch_size=4))
  assert (student.steps, student.learning_rate, student.encoder_rate, student.freeze, student.batch_size) == (
      40, 1e-3, 1e-3, "all", 4)
  from mslam_jax import config  # pylint: disable=import-outside-toplevel
  try:  # the run config parses on its own, e.g. as `mslam demo --gin_file=runs/eval_self_training.gin`
    config.parse_gin(["runs/eval_self_training.gin"])
    configured = finetune.SelfTrainingConfig()
  finally:
    gin.clear_config()
  assert (configured.steps, configured.rounds, configured.pool) == (800, 2, "held_out")


def test_a_heads_directory_follows_the_bindings_not_gins_import_aliases(monkeypatch, tmp_path):
  # gin names imported modules with aliases (mslam_jax8, mslam_jax62, ...) that vary between
  # processes; a head trained once per checkpoint and config must be found again by the next one,
  # also when only the self-training that follows it changed (the students' keys hold that).
  texts = iter(["import m.finetune as mslam_jax8\nFinetuneConfig.steps = 3\n",
                "import m.finetune as mslam_jax62\nFinetuneConfig.steps = 3\nSelfTrainingConfig.steps = 800\n"
                "st/SelfTrainingConfig.rounds = 2\n",
                "import m.finetune as mslam_jax8\nFinetuneConfig.steps = 4\n"])
  monkeypatch.setattr(gin, "config_str", lambda: next(texts))
  ctx = base.EvalContext(None, None, 5, model_dir=str(tmp_path))
  first, again, other = [finetune_job._head_dir(ctx, "ctc", {"task": "ctc"}) for _ in range(3)]  # pylint: disable=protected-access
  assert first == again != other and first.startswith(str(tmp_path / "finetune" / "ctc_step5_"))


def test_speech_only_bindings_switch_off_every_objective_that_reads_text():
  from mslam_jax.models import mslam  # pylint: disable=import-outside-toplevel
  fields = [f.name for f in dataclasses.fields(mslam.ObjectiveWeights)]
  gin.parse_config([f"ObjectiveWeights.{name} = 1.0" for name in fields] + [
      b for b in zero_shot.SPEECH_ONLY_BINDINGS if b.startswith("ObjectiveWeights.")])
  try:
    weights = mslam.ObjectiveWeights()
  finally:
    gin.clear_config()
  on = {name for name in fields if getattr(weights, name) > 0}
  assert on == {"speech_contrastive", "diversity", "speech_mlm"}


def test_embedding_evaluators(corpus, model_and_params, tmp_path):
  model, params = model_and_params
  evaluators = [registry.get(n)() for n in ("retrieval", "langid", "embedding_map")]
  result = registry.run_evaluators(evaluators, base.EvalContext(model, params, 3, corpus_dir=corpus,
                                                                out_dir=str(tmp_path)))
  metrics = result.metrics
  assert metrics["eval_failed_evaluators"] == 0 and result.complete
  for direction in ("speech_to_text", "text_to_speech"):
    for name in ("r1", "r5", "mrr"):
      assert 0.0 <= metrics[f"retrieval_{name}_{direction}"] <= 1.0
  # Each language has its own hum: the speech probe must separate them.
  assert metrics["langid_accuracy_speech"] > 0.9
  assert metrics["langid_accuracy_text"] > metrics["langid_chance_text"]
  assert 0 < metrics["langid_macro_f1_speech"] <= 1
  for name in ("retrieval_similarity.png", "langid_confusion_speech.png", "langid_confusion_text.png",
               "embedding_map.png", "langid_probe_speech.npz"):
    assert (tmp_path / name).exists(), name


def test_speech_language_id_features_fall_back_to_what_the_model_gives(corpus, tmp_path):
  import collections  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import langid  # pylint: disable=g-import-not-at-top

  class WithCTC:
    has_ctc_head = True
    def speech_statistics(self):
      pass

  class WithoutCTC(WithCTC):
    has_ctc_head = False

  assert langid.model_speech_features(WithCTC(), langid.PHONOTACTICS) == langid.PHONOTACTICS
  assert langid.model_speech_features(WithoutCTC(), langid.PHONOTACTICS) == "statistics"
  assert langid.model_speech_features(synthetic.SpectralModel(), langid.PHONOTACTICS) == "pooled"
  assert langid.model_speech_features(WithCTC(), "pooled") == "pooled"
  with pytest.raises(ValueError, match="speech features"):
    langid.model_speech_features(WithCTC(), "mfcc")
  # The units: the corpus text's most frequent characters, reserved ids (blank among them) aside.
  vocab = eval_data.load_vocabulary(corpus)
  counts = collections.Counter()
  for utt in eval_data.read_utterances(corpus, "text", "train"):
    counts.update(vocab.encode(utt.text))
  units = langid.phonotactic_units(corpus, 5)
  assert len(units) == 5 and min(units) >= 5
  assert sorted(counts[u] for u in units) == sorted(counts[i] for i in counts if i >= 5)[-5:]
  evaluator = langid.LangIDEvaluator(corpus_dir=corpus, num_phonotactic_units=5)
  assert evaluator.speech_setup(WithCTC()) == (langid.PHONOTACTICS, units)
  assert evaluator.speech_setup(WithoutCTC()) == ("statistics", None)
  with pytest.raises(ValueError, match="num_phonotactic_units"):
    langid.LangIDEvaluator(num_phonotactic_units=0)
  # A corpus of speech alone: nothing to choose the units from, the statistics alone.
  speech_only = tmp_path / "speech_only"
  shutil.copytree(os.path.join(corpus, "speech"), speech_only / "speech")
  for name in ("vocab", "manifest.json"):
    (shutil.copytree if name == "vocab" else shutil.copy)(os.path.join(corpus, name), speech_only / name)
  assert langid.phonotactic_units(str(speech_only)) == []
  assert evaluator.speech_setup(WithCTC(), str(speech_only)) == ("statistics", None)


def test_build_from_gin_and_failures_are_counted(corpus, model_and_params):
  model, params = model_and_params
  gin.parse_config("""
      build_evaluators.names = ["retrieval"]
      RetrievalEvaluator.max_per_lang = 4
  """)
  try:
    evaluators = registry.build_evaluators()
  finally:
    gin.clear_config()
  assert [e.name for e in evaluators] == ["retrieval"]
  broken = registry.get("retrieval")(corpus_dir=os.path.join(corpus, "missing"))
  broken.name = "retrieval_elsewhere"
  result = registry.run_evaluators(evaluators + [broken], base.EvalContext(model, params, 0, corpus_dir=corpus))
  assert result.metrics["eval_failed_evaluators"] == 1 and result.failed == ["retrieval_elsewhere"]
  assert result.metrics["retrieval_pool_size"] == 12
  with pytest.raises(KeyError, match="unknown evaluator"):
    registry.get("bleu")


def test_the_corpus_comes_with_the_context_not_from_gin(corpus, model_and_params):
  model, params = model_and_params
  gin.parse_config(f"CORPUS_DIR = '{corpus}'")  # a global macro is never read by an evaluator
  try:
    with pytest.raises(ValueError, match="no corpus for RetrievalEvaluator"):
      registry.get("retrieval")().evaluate(base.EvalContext(model, params, 0))
  finally:
    gin.clear_config()
  # An evaluator's own corpus_dir overrides the context's.
  ctx = base.EvalContext(model, params, 0, corpus_dir=os.path.join(corpus, "missing"))
  assert registry.get("retrieval")(corpus_dir=corpus, max_per_lang=2).evaluate(ctx)["retrieval_pool_size"] == 6
