"""Each reader on a small tree in its release's layout: the records, the quirks, the bad rows counted."""
import collections
import logging

import numpy as np
import pytest

from mslam_jax.data import audio as audio_lib
from mslam_jax.data import records
from mslam_jax.data.corpora import base
from mslam_jax.data.corpora import babel
from mslam_jax.data import corpora
from tests.data.corpora import trees


def _read(name, tmp_path, **options):
  root = trees.WRITERS[name](str(tmp_path / name))
  counter = audio_lib.SkipCounter(logging.getLogger("test"))
  recs = list(corpora.reader(name).read(root, counter, None, **options))
  return recs, counter


def _utterances(recs, counter):
  return [u for r in recs for u in base.to_utterances(r, counter)]


def test_fleurs_both_layouts_and_bad_rows(tmp_path):
  recs, counter = _read("fleurs", tmp_path)
  by_lang = collections.Counter((r.lang, r.split) for r in recs)
  assert by_lang[("afr", "train")] == 5 and by_lang[("cmn", "validation")] == 1
  assert {r.speaker for r in recs if r.lang == "cmn"} == {"spk7", "s"}  # 8-column layout: speaker id
  assert {r.speaker for r in recs if r.lang == "afr"} == {""}
  assert counter.skipped == {"malformed_row": 2, "unknown_language": 1}
  utts = _utterances(recs, counter)
  assert counter.skipped["missing_audio"] == 2 and counter.skipped["empty_text"] == 2
  assert counter.repaired["downmixed"] == 1 and counter.repaired["resampled"] == 1
  stereo = next(u for u in utts if u.id == "fleurs-af_za-train-1001")
  assert stereo.audio.ndim == 1 and len(stereo.audio) == int(1.25 * records.SAMPLE_RATE)
  assert next(u for u in utts if u.id == "fleurs-cmn_hans_cn-train-1000").text == "今天天气很好。"


def test_common_voice_headers_quotes_validated_and_durations(tmp_path):
  recs, counter = _read("common_voice", tmp_path)
  fr = {r.id: r for r in recs if r.lang == "fra"}
  train = sorted(r.id for r in fr.values() if r.split == "train")
  # validated minus dev/test, without repeating the train.tsv clip.
  assert train == [f"cv-fr-common_voice_fr_{i}" for i in range(3)]
  assert fr["cv-fr-common_voice_fr_0"].text == 'Il a dit "bonjour" à tous.'
  assert fr["cv-fr-common_voice_fr_1"].duration_s == pytest.approx(1.2)
  sv = [r for r in recs if r.lang == "swe"]
  assert len(sv) == 3 and all(r.audio_path.endswith(".mp3") for r in sv)  # old release: path without .mp3
  assert counter.skipped == {"malformed_row": 1, "unknown_language": 1}
  utts = _utterances(recs, counter)
  assert len(utts) == 8 and counter.repaired["resampled"] == 8  # 48 kHz mp3
  assert abs(len(utts[0].audio) / records.SAMPLE_RATE - 1.0) < 0.1


def test_mls_limited_supervision(tmp_path):
  recs, counter = _read("mls", tmp_path)
  assert len(recs) == 5 and counter.skipped == {"malformed_row": 1}
  assert {r.speaker for r in recs if r.split == "train"} == {"10", "11"}
  nine, _ = _read("mls", tmp_path / "again", subset="9hr")
  assert sorted(r.id for r in nine if r.split == "train") == ["mls-german-10_100_000001", "mls-german-11_200_000003"]
  with pytest.raises(ValueError, match="subset"):
    _read("mls", tmp_path / "bad", subset="2hr")


def test_voxpopuli_session_segments_are_cut_not_dropped(tmp_path):
  recs, counter = _read("voxpopuli", tmp_path)
  unlabeled = [r for r in recs if not r.text]
  assert len(unlabeled) == 2 and counter.skipped == {"malformed_row": 1}
  utts = _utterances(unlabeled, counter)
  long_parts = [u for u in utts if "-0001-c" in u.id]
  assert len(long_parts) == 3  # 70 s -> three clips of ~23 s, none dropped
  assert all(len(u.audio) <= 30 * records.SAMPLE_RATE for u in long_parts)
  assert sum(len(u.audio) for u in long_parts) == pytest.approx(70 * records.SAMPLE_RATE, abs=2)
  labeled = [r for r in recs if r.text]
  assert {r.split for r in labeled} == {"train", "validation", "test"} and labeled[0].text.startswith("Herr")


def test_babel_sphere_turns_and_markup_rule(tmp_path):
  recs, counter = _read("babel", tmp_path)
  assert [r.text for r in recs if r.split == "train"] == ["喂 你好 係 我", "早晨 你 食"]
  assert counter.skipped == {"markup_only_text": 6}
  first = recs[0]
  assert (first.start_s, first.end_s, first.lang) == (1.5, 4.25, "yue")
  utts = _utterances(recs, counter)
  assert len(utts[0].audio) == int(2.75 * records.SAMPLE_RATE)  # 8 kHz mu-law turn, resampled
  assert np.abs(utts[0].audio).max() > 0.1
  assert babel.clean_transcript("<hes> ((maybe)) (()) *wrod* go~ ing-") == "maybe wrod go ing"


def test_mc4_codes_paragraphs_and_und(tmp_path):
  recs, counter = _read("mc4", tmp_path)
  assert {r.lang for r in recs} == {"heb", "rus"}  # iw -> Hebrew, ru-Latn -> Russian
  assert counter.skipped == {"malformed_row": 1, "unknown_language": 1}  # the bad line; und
  assert [r.labels["corpus_lang"] for r in recs if r.lang == "rus"] == ["ru-Latn"]  # "korotko" too short
  assert sum(r.split == "validation" for r in recs) == 1 and not any(r.has_audio for r in recs)


def test_covost2_joins_common_voice_clips(tmp_path):
  recs, counter = _read("covost2", tmp_path)
  assert collections.Counter(r.split for r in recs) == {"train": 3, "validation": 1, "test": 1}
  assert recs[0].text == 'Phrase 0 "citée".' and recs[0].labels["translation"] == "Sentence 0."
  assert counter.skipped == {"malformed_row": 1}
  assert len(_utterances(recs, counter)) == 5


def test_minds14_intents_and_stable_splits(tmp_path):
  recs, counter = _read("minds14", tmp_path)
  assert {r.lang for r in recs} == {"eng"} and {r.labels["intent"] for r in recs} == {"abroad"}
  again, _ = _read("minds14", tmp_path / "again")
  assert [r.split for r in recs] == [r.split for r in again]
  utts = _utterances(recs, counter)
  assert len(utts) == 6 and counter.skipped == {"missing_audio": 1} and counter.repaired["resampled"] == 6


def test_hf_parquet_decodes_audio_bytes(tmp_path):
  recs, counter = _read("hf_parquet", tmp_path)
  assert collections.Counter(r.split for r in recs) == {"train": 4, "test": 4}
  utts = _utterances(recs, counter)
  assert len(utts) == 6 and counter.skipped == {"unreadable_audio": 2}
  assert abs(len(utts[1].audio) - 1.1 * records.SAMPLE_RATE) < 10


def test_unknown_corpus_is_named():
  with pytest.raises(ValueError, match="unknown corpus 'timit'"):
    corpora.reader("timit")


def test_mc4_from_a_tfds_data_dir_through_seqio(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  counter = audio_lib.SkipCounter(logging.getLogger("test"))
  # TFDS's own mock of a prepared c4/multilingual (its splits `iw` and `iw-validation`).
  with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
    recs = list(corpora.reader("mc4").read(str(tmp_path), counter, None, tfds_data_dir=str(tmp_path),
                                           tfds_languages="iw,und", min_chars=1))
  assert collections.Counter(r.split for r in recs) == {"train": 3, "validation": 3}
  assert {r.lang for r in recs} == {"heb"} and counter.skipped == {"unknown_language": 1}
  with pytest.raises(ValueError, match="tfds_languages"):
    list(corpora.reader("mc4").read(str(tmp_path), counter, None, tfds_data_dir=str(tmp_path)))
