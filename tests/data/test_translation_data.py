"""The built-in speech translation data (mslam_jax/data/translation.py) and its SeqIO Tasks
(tasks/translation.py), on translation data built next to a copy of the tiny corpus."""
import datetime
import itertools
import json
import os
import shutil

import numpy as np
import pytest
import seqio

from mslam_jax.data import espeak
from mslam_jax.data import languages
from mslam_jax.data import translation
from mslam_jax.data import vocabularies
from mslam_jax.data.vocabularies import EOS_ID

PER_LANGUAGE = 8


@pytest.fixture(scope="module")
def corpus(builtin_corpus_dir, tmp_path_factory) -> str:
  """A copy of the tiny corpus' manifest and vocabulary with translation data built into it."""
  out = str(tmp_path_factory.mktemp("translation_corpus"))
  shutil.copy(os.path.join(builtin_corpus_dir, "manifest.json"), out)
  shutil.copytree(os.path.join(builtin_corpus_dir, "vocab"), os.path.join(out, "vocab"))
  translation.build_translation_data(out, per_language=PER_LANGUAGE, progress=False, synthesize=espeak.synthesize)
  return out


def test_sources_are_the_voiced_languages_and_the_corpus_held_out_ones_stay_out(corpus):
  manifest = translation.read_manifest(corpus)
  # The tiny corpus: cmn deu eng rus ukr zul; English is the target, Zulu has no voice.
  assert sorted(manifest["languages"]) == ["cmn", "deu", "rus", "ukr"]
  assert manifest["held_out_languages"] == ["ukr"]
  assert manifest["languages"]["ukr"]["splits"]["train"]["items"] == 0
  assert manifest["languages"]["ukr"]["splits"]["test"]["items"] > 0
  for lang in ("cmn", "deu", "rus"):
    splits = manifest["languages"][lang]["splits"]
    assert splits["train"]["items"] > 0 and splits["test"]["items"] > 0
  train_targets = [x.target for x in translation.read_items(corpus, "train")]
  assert train_targets.count(manifest["most_frequent_target"]) == max(map(train_targets.count, train_targets))


def test_speech_in_x_is_paired_with_the_english_string_of_the_same_key(corpus):
  english = translation.keyed_names("eng")
  checked = 0
  items = [x for split in ("train", "validation", "test") for x in translation.read_items(corpus, split)]
  assert len(items) == 4 * PER_LANGUAGE
  for item in items:
    kind, value = item.key.split(":", 1)
    if kind in ("month", "weekday", "territory", "language"):
      assert item.target == english[item.key] and item.text == translation.keyed_names(item.lang)[item.key]
      checked += 1
    elif kind == "date":
      date = datetime.date.fromisoformat(value)
      assert str(date.year) in item.target and date.strftime("%B") in item.target
    else:
      assert kind == "territory_list"
      names = [english[f"territory:{code}"] for code in value.split("+")]
      assert all(name in item.target for name in names)
    # Speech of the source, by a voice of the source language.
    assert len(item.audio) > 1600 and np.abs(item.audio).max() > 0.01
    assert item.voice.split("+")[0].split(";")[0] in languages.get(item.lang).espeak_voices
  assert checked >= 8
  # Known keys, by hand.
  assert translation.pair_for_key("deu", "month:3") == translation.Pair("month:3", "März", "March")
  assert translation.pair_for_key("rus", "weekday:0").target == "Monday"
  assert translation.pair_for_key("deu", "date:1987-03-04").source == "4. März 1987"
  assert translation.pair_for_key("deu", "date:1987-03-04").target == "March 4, 1987"


def test_splits_are_disjoint_and_evaluation_voices_are_unseen(corpus):
  for lang in ("cmn", "deu", "rus"):
    keys = {s: {x.key for x in translation.read_items(corpus, s, [lang])} for s in ("train", "validation", "test")}
    assert not keys["train"] & keys["test"] and not keys["train"] & keys["validation"]
    for item in translation.read_items(corpus, "test", [lang]):
      variant = item.voice.split(";")[0].partition("+")[2]
      assert variant in espeak.EVAL_VARIANTS


def test_pairs_are_deterministic_and_distinct():
  first = list(itertools.islice(translation.iter_pairs("deu", seed=3), 40))
  again = list(itertools.islice(translation.iter_pairs("deu", seed=3), 40))
  assert first == again and len({p.key for p in first}) == 40
  assert first != list(itertools.islice(translation.iter_pairs("deu", seed=4), 40))
  # Only the kinds asked for; a language's names run out (12 months + 7 weekdays).
  assert len(list(translation.iter_pairs("deu", 0, kinds=("month", "weekday"), max_failures=50))) == 19
  with pytest.raises(ValueError, match="unknown translation kinds"):
    next(translation.iter_pairs("deu", 0, kinds=("month", "colour")))


def test_name_pools_are_shared_by_all_source_languages():
  pool = translation.key_pool("territory", 10, seed=0)
  assert len(pool) == 10 and pool == translation.key_pool("territory", 10, seed=0)
  assert pool != translation.key_pool("territory", 10, seed=1)
  for code in ("deu", "rus"):
    pairs = list(itertools.islice(translation.iter_pairs(code, 0, kinds=("territory", "territory_list"),
                                                         pool_sizes={"territory": 10}), 30))
    names = {f"territory:{c}" for p in pairs for c in p.key.split(":", 1)[1].split("+")}
    assert names <= pool and len(names) >= 5


def test_builder_is_a_no_op_when_up_to_date_and_rejects_a_missing_corpus(corpus, tmp_path):
  manifest = translation.read_manifest(corpus)
  assert translation.build_translation_data(corpus, per_language=PER_LANGUAGE, progress=False,
                                            synthesize=espeak.synthesize)["build_seconds"] == manifest["build_seconds"]
  with pytest.raises(FileNotFoundError, match="build the corpus first"):
    translation.build_translation_data(str(tmp_path), progress=False)


def test_make_batch_encodes_targets_with_eos(corpus):
  vocab = vocabularies.vocabulary_for_corpus(corpus)
  items = translation.read_items(corpus, "train", ["deu"])[:3]
  speech = translation.make_batch(items, vocab, "speech", target_length=64, audio_samples=16000)
  text = translation.make_batch(items, vocab, "text", target_length=64, text_length=48)
  for i, item in enumerate(items):
    n = int(speech["targets_mask"][i].sum())
    assert speech["targets"][i, n - 1] == EOS_ID
    assert list(speech["targets"][i, :n - 1]) == list(vocab.encode(item.target))
    assert list(text["tokens"][i, :int(text["tokens_mask"][i].sum())]) == list(vocab.encode(item.text))
  assert speech["audio"].shape == (3, 16000) and "tokens" not in speech and "audio" not in text


def test_seqio_tasks_and_translation_batches(corpus):
  from mslam_jax.tasks import translation as tasks  # pylint: disable=g-import-not-at-top
  names = tasks.register_builtin_translation(corpus)
  assert names == {"train": "builtin_translation", "heldout": "builtin_translation_heldout"}
  mixture = seqio.get_mixture_or_task("builtin_translation")
  assert sorted(t.name for t in mixture.tasks) == ["builtin_translation_cmn", "builtin_translation_deu",
                                                    "builtin_translation_rus"]
  assert [t.name for t in seqio.get_mixture_or_task("builtin_translation_heldout").tasks] == ["builtin_translation_ukr"]
  vocab = vocabularies.vocabulary_for_corpus(corpus)
  by_source = {tuple(vocab.encode(x.text)): x.target for x in translation.read_items(corpus, "train")}
  batches = tasks.translation_batches("builtin_translation", "train", speech_batch=2, audio_samples=48000,
                                      text_batch=3, text_length=40, target_length=48, seed=1)
  batch = next(batches)
  assert batch["speech"]["audio"].shape == (2, 48000) and batch["text"]["tokens"].shape == (3, 40)
  for row in range(3):
    text = batch["text"]
    source = tuple(text["tokens"][row, :int(text["tokens_mask"][row].sum())])
    n = int(text["targets_mask"][row].sum())
    assert text["targets"][row, n - 1] == EOS_ID
    assert list(text["targets"][row, :n - 1]) == list(vocab.encode(by_source[source]))
  assert set(batch["speech"]["lang"]) <= {languages.lang_id(c) for c in ("cmn", "deu", "rus")}
  with open(os.path.join(corpus, "translation", "manifest.json")) as f:
    assert json.load(f)["complete"]
