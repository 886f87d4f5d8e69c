"""The built-in corpus builder, on the session's tiny corpus (tests/conftest.py)."""
import functools
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from mslam_jax import cli
from mslam_jax.data import audio as audio_lib
from mslam_jax.data import builtin_corpus
from mslam_jax.data import languages
from mslam_jax.data import records
from mslam_jax.data import vocabularies
from tests import conftest


@functools.lru_cache(maxsize=None)
def _read_all(corpus_dir):
  """{(stream, lang, split): [Utterance]} of every shard, read through one tf.data pipeline."""
  files = sorted(glob.glob(os.path.join(corpus_dir, "*", "*", "*.tfrecord-*")))
  dataset = tf.data.Dataset.from_tensor_slices(files).flat_map(
      lambda f: tf.data.TFRecordDataset(f).map(lambda r: (f, r)))
  out = {}
  for path, record in dataset.as_numpy_iterator():
    stream, lang, name = os.path.relpath(path.decode(), corpus_dir).split(os.sep)
    out.setdefault((stream, lang, name.split(".")[0]), []).append(records.from_example_bytes(record))
  return out


def _read(corpus_dir, stream, lang, split):
  return _read_all(corpus_dir).get((stream, lang, split), [])


@pytest.fixture(scope="module")
def manifest(builtin_corpus_dir):
  with open(os.path.join(builtin_corpus_dir, "manifest.json"), encoding="utf-8") as f:
    return json.load(f)


def test_manifest_describes_every_shard(builtin_corpus_dir, manifest):
  assert set(manifest["languages"]) == set(conftest.TINY_LANGUAGES)
  assert manifest["held_out_languages"] == list(conftest.TINY_HELD_OUT)
  assert manifest["seed"] == conftest.TINY_SEED and manifest["complete"]
  assert manifest["streams"]["text"] == sorted(conftest.TINY_LANGUAGES)
  assert "zul" not in manifest["streams"]["paired"] and "zul" not in manifest["streams"]["speech"]
  for code, entry in manifest["languages"].items():
    assert entry["lang_id"] == languages.lang_id(code)
    for stream, splits in entry["streams"].items():
      for split, stats in splits.items():
        utts = _read(builtin_corpus_dir, stream, code, split)
        assert stats["clips"] == len(utts)
        assert stats["characters"] == sum(len(u.text) for u in utts)
        assert stats["hours"] == pytest.approx(sum(len(u.audio) for u in utts) / 16000 / 3600, rel=1e-6)
  assert manifest["skipped"] == {}


def test_splits_and_held_out(builtin_corpus_dir, manifest):
  for code, entry in manifest["languages"].items():
    paired = entry["streams"].get("paired")
    if code in manifest["held_out_languages"]:
      assert paired["train"]["clips"] == 0 and not _read(builtin_corpus_dir, "paired", code, "train")
      assert paired["validation"]["clips"] + paired["test"]["clips"] == conftest.TINY_PER_LANGUAGE
      assert entry["streams"]["speech"]["train"]["clips"] > 0  # only paired data is held out
    elif paired:
      assert {s: paired[s]["clips"] for s in records.SPLITS} == builtin_corpus.split_sizes(
          conftest.TINY_PER_LANGUAGE)
    assert entry["streams"]["text"]["train"]["clips"] == builtin_corpus.split_sizes(
        conftest.TINY_TEXT_PER_LANGUAGE)["train"]


def test_streams_hold_distinct_sentences(builtin_corpus_dir):
  for code in ("eng", "rus", "cmn"):
    texts = [u.text for s in records.STREAMS for split in records.SPLITS
             for u in _read(builtin_corpus_dir, s, code, split)]
    assert len(texts) == 2 * conftest.TINY_PER_LANGUAGE + conftest.TINY_TEXT_PER_LANGUAGE
    assert len(set(texts)) == len(texts)


def test_spoken_transcripts_spell_their_numbers(builtin_corpus_dir):
  """Speech streams say numbers in words (eSpeak reads digits aloud); the text stream keeps digits."""
  spoken = [u.text for (stream, _, _), utts in _read_all(builtin_corpus_dir).items() if stream != "text"
            for u in utts]
  assert spoken and not any(ch.isdigit() for text in spoken for ch in text)


def test_paired_clips_carry_word_timings(builtin_corpus_dir):
  utts = _read(builtin_corpus_dir, "paired", "deu", "train")
  voices = {u.voice for u in utts}
  assert len(voices) == len(utts)  # a different speaker for every clip
  for u in utts:
    assert u.lang == "deu" and u.id.startswith("deu-paired-")
    assert 0.3 < len(u.audio) / 16000 < 20 and np.abs(u.audio).max() > 0.05
    assert len(u.words) == len(u.word_starts_ms) == len(u.word_ends_ms) > 0
    assert all(w in u.text for w in u.words)
    assert all(s < e for s, e in zip(u.word_starts_ms, u.word_ends_ms))
    assert u.word_ends_ms[-1] <= len(u.audio) / 16 + 10
  text_only = _read(builtin_corpus_dir, "text", "zul", "train")
  assert text_only and all(len(u.audio) == 0 and not u.words for u in text_only)


def test_vocabulary_covers_training_text(builtin_corpus_dir):
  vocab = vocabularies.CharacterVocabulary.load(os.path.join(builtin_corpus_dir, "vocab"))
  for stream in ("text", "paired"):
    for code in ("cmn", "rus", "eng"):
      for u in _read(builtin_corpus_dir, stream, code, "train"):
        assert vocabularies.UNK_ID not in vocab.encode(u.text)
  # Ukrainian is held out from paired training, but its text is trained on: its transcripts are
  # nearly all known symbols (a tiny corpus may miss a rare letter).
  ids = [i for u in _read(builtin_corpus_dir, "paired", "ukr", "test") for i in vocab.encode(u.text)]
  assert ids and ids.count(vocabularies.UNK_ID) <= 0.1 * len(ids)


def test_rebuild_with_the_same_arguments_is_a_no_op(builtin_corpus_dir, manifest):
  before = os.path.getmtime(os.path.join(builtin_corpus_dir, "manifest.json"))
  again = conftest.build_tiny_corpus(builtin_corpus_dir)
  assert again["config_hash"] == manifest["config_hash"]
  assert os.path.getmtime(os.path.join(builtin_corpus_dir, "manifest.json")) == before


def test_deterministic_for_a_seed(tmp_path):
  small = dict(languages_=("eng", "rus"), held_out=(), per_language=2, text_per_language=3)
  one = conftest.build_tiny_corpus(str(tmp_path / "one"), seed=1, **small)
  # The same arguments through the CLI (synthesis in a worker process), in another directory: the
  # same bytes.
  assert cli.main(["data", "build-builtin", "--out", str(tmp_path / "cli"), "--languages", "eng,rus",
                   "--held-out", "", "--per-language", "2", "--text-per-language", "3", "--seed", "1"]) == 0
  for stream, lang, split in (("paired", "rus", "train"), ("speech", "eng", "train"), ("text", "rus", "train")):
    name = records.shard_name(stream, lang, split, 0, 1)
    with open(tmp_path / "one" / name, "rb") as a, open(tmp_path / "cli" / name, "rb") as b:
      assert a.read() == b.read(), name
  other = conftest.build_tiny_corpus(str(tmp_path / "two"), seed=2, **small)
  assert one["config_hash"] != other["config_hash"]
  texts = lambda d: [u.text for u in _read(str(tmp_path / d), "text", "rus", "train")]
  assert texts("one") != texts("two")


def test_selection_puts_held_out_and_core_languages_first():
  counter = audio_lib.SkipCounter()
  selected = builtin_corpus.select_languages(8, 0, None, counter)
  assert len(selected) == 8 and selected[0] == builtin_corpus.DEFAULT_HELD_OUT[0]
  assert "eng" in selected and builtin_corpus.select_languages(8, 0, None, counter) == selected
  full = builtin_corpus.select_languages(None, 0, None, counter)
  assert len(full) == len(languages.with_stream("text"))
  held = builtin_corpus.choose_held_out(full, None)
  assert held == list(builtin_corpus.DEFAULT_HELD_OUT)
  train_scripts = {languages.get(c).script for c in full if c not in held and "paired" in languages.get(c).streams}
  assert all(languages.get(c).script in train_scripts for c in held)


def test_held_out_needs_its_script_in_training():
  # Japanese is the only Jpan language: holding it out would leave CTC without its symbols.
  assert builtin_corpus.choose_held_out(["eng", "jpn", "deu"], ["jpn", "deu"]) == ["deu"]
  assert builtin_corpus.choose_held_out(["eng", "deu"], ["deu", "eng"]) == ["deu"]  # one stays


def test_evaluation_splits_are_spoken_by_voices_training_never_hears(builtin_corpus_dir):
  from mslam_jax.data import espeak  # pylint: disable=g-import-not-at-top
  seen = {}
  for (stream, _, split), utts in _read_all(builtin_corpus_dir).items():
    if stream == "text":
      continue
    for utt in utts:
      name = utt.voice.split(";")[0]
      seen.setdefault(split, set()).add(name.split("+")[1] if "+" in name else "")
  assert seen["train"] and seen["train"] <= set(espeak.TRAIN_VARIANTS)
  assert seen["test"] and seen["test"] <= set(espeak.EVAL_VARIANTS)
  assert seen.get("validation", set()) <= set(espeak.EVAL_VARIANTS)
  assert not set(espeak.TRAIN_VARIANTS) & set(espeak.EVAL_VARIANTS)


def test_paired_stream_can_outgrow_the_speech_stream():
  config = builtin_corpus.BuildConfig(languages=("eng",), held_out=(), per_language=3, paired_per_language=6,
                                      text_per_language=2, seed=0, max_speech_chars=160, max_text_chars=400,
                                      max_seconds=20.0)
  eng = languages.get("eng")
  paired, speech, text = builtin_corpus._draw_sentences(eng, config, 6, 3, 2)  # pylint: disable=protected-access
  assert (len(paired), len(speech), len(text)) == (6, 3, 2)
  assert len(set(paired) | set(speech) | set(text)) == 11  # disjoint
  # The streams draw in turn until the speech stream is full: its sentences are those of an equal build.
  equal_paired, equal_speech, _ = builtin_corpus._draw_sentences(eng, config, 3, 3, 2)  # pylint: disable=protected-access
  assert equal_speech == speech and equal_paired == paired[:3]
