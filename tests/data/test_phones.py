"""Phones of text (mslam_jax.data.phones): eSpeak's IPA, its ids in Python and in tf.data, and the
text stream that carries them."""
import collections

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf

from mslam_jax.data import espeak
from mslam_jax.data import languages
from mslam_jax.data import phones
from mslam_jax.data import pipeline
from mslam_jax.data import preprocessors
from mslam_jax.data import records
from mslam_jax.data import special_ids
from mslam_jax.data import vocabularies


def test_phonemes_are_what_the_voice_says_in_one_inventory_for_every_language():
  # Afrikaans and Dutch write /v/ as "w"; English writes /w/ as "w": the phones tell them apart.
  afr, nld, eng = (phones.phonemize("Woensdag", lang) for lang in ("afr", "nld", "eng"))
  assert afr.lstrip("ˈ")[0] in "vʋ" and nld.lstrip("ˈ")[0] in "vʋ" and eng.lstrip("ˈ")[0] == "w", (afr, nld, eng)
  text = phones.phonemize("Sondag, Woensdag en Vrydag.", "afr")
  assert text.count(" ") == 3 and "  " not in text  # words, one space each; clauses joined
  ids = phones.encode(text)
  assert ids.min() > special_ids.NUM_RESERVED - 1 and ids.max() < phones.VOCAB_SIZE
  assert special_ids.UNK_ID not in ids.tolist() and phones.decode(ids) == text
  # A language eSpeak has no voice for, and empty text, give no phones.
  assert phones.phonemize("Sawubona baba", "zul") == "" and phones.phonemize("  ", "afr") == ""
  assert espeak.text_to_phonemes("hello", "no-such-voice") == ""


def test_tf_ids_are_the_python_ids():
  samples = ["sˈɔndɐx vˈunsdɐx", "θɹuː ðə wˈɪndoʊ", "kolɔ̃bjˈɛ̃ ʒ", "æ ç ð ø ħ ŋ œ β θ χ", "a1b-c", "ʐˈuei5 s.ˈi", ""]
  for text in samples:
    want = phones.encode(text)
    got = phones.encode_tf(tf.constant(text.encode("utf-8"))).numpy()
    np.testing.assert_array_equal(got, want, err_msg=text)
  assert phones.encode("a-")[1] == special_ids.UNK_ID


def test_records_keep_phones_and_older_records_read_as_none():
  utt = records.Utterance(id="x", lang="afr", text="Sondag", phones="sˈɔndɐx")
  assert records.from_example_bytes(records.to_example_bytes(utt)).phones == "sˈɔndɐx"
  parsed = tf.io.parse_single_example(records.to_example_bytes(utt), records.feature_description())
  assert parsed["phones"].numpy().decode() == "sˈɔndɐx"
  example = tf.train.Example.FromString(records.to_example_bytes(utt))
  del example.features.feature["phones"]
  old = tf.io.parse_single_example(example.SerializeToString(), records.feature_description())
  assert old["phones"].numpy() == b""
  ds = preprocessors.prepare_records(tf.data.Dataset.from_tensors(
      {"text": old["text"], "phones": old["phones"]}), "text", vocabularies.CharacterVocabulary(["S", "o"]),
      lang_id=0, counter_prefix="old_corpus", phones=True)
  (item,) = list(ds.as_numpy_iterator())
  assert item["phones"].size == 0 and preprocessors.drop_counts()["no_phones/old_corpus"] >= 1


def test_text_stream_carries_each_items_phones(builtin_corpus_dir):
  with gin.unlock_config():
    gin.clear_config()
    it = pipeline.builtin_step_iterator(builtin_corpus_dir, [
        "SPEECH_BATCH = 0", "TEXT_BATCH = 8", "PAIRED_BATCH = 0", "TEXT_LENGTH = 48",
        "register_builtin_corpus.phones = True", "make_step_iterator.text_phones_length = 64"],
        shard_info=seqio.ShardInfo(0, 1))
    batches = [next(it) for _ in range(3)]
    gin.clear_config()
  assert it.element_spec["text"]["phones"].shape == (8, 64)
  vocab = vocabularies.vocabulary_for_corpus(builtin_corpus_dir)
  seen = collections.Counter()
  for batch in batches:
    text = batch["text"]
    for tokens, mask, ids, phones_mask, lang in zip(text["tokens"], text["tokens_mask"], text["phones"],
                                                    text["phones_mask"], text["lang"]):
      code = languages.all_languages()[lang].code
      said = phones.phonemize(vocab.decode(tokens[mask == 1].tolist()), code)
      if int(mask.sum()) < 48:  # not truncated: its phones are the whole text's
        np.testing.assert_array_equal(ids[phones_mask == 1], phones.encode(said)[:64], err_msg=code)
      seen[bool(phones_mask.sum())] += 1
  assert seen[True] > 0


def test_phones_need_a_registered_corpus_that_carries_them(builtin_corpus_dir):
  with gin.unlock_config():
    gin.clear_config()
    it = pipeline.builtin_step_iterator(builtin_corpus_dir, [
        "SPEECH_BATCH = 0", "TEXT_BATCH = 2", "PAIRED_BATCH = 0", "make_step_iterator.text_phones_length = 16"],
        shard_info=seqio.ShardInfo(0, 1))
    with pytest.raises(ValueError, match="register_builtin_corpus.phones = True"):
      next(it)
    gin.clear_config()


def test_paired_stream_carries_each_transcripts_phones(builtin_corpus_dir):
  with gin.unlock_config():
    gin.clear_config()
    it = pipeline.builtin_step_iterator(builtin_corpus_dir, [
        "SPEECH_BATCH = 0", "TEXT_BATCH = 0", "PAIRED_BATCH = 2", "PAIRED_SAMPLES = 128000",
        "PAIRED_TEXT_LENGTH = 256", "register_builtin_corpus.phones = True",
        "make_step_iterator.paired_phones_length = 320"], shard_info=seqio.ShardInfo(0, 1))
    batches = [next(it) for _ in range(2)]
    gin.clear_config()
  vocab = vocabularies.vocabulary_for_corpus(builtin_corpus_dir)
  for batch in batches:
    paired = batch["paired"]
    assert paired["phones"].shape == (2, 320) and "audio" in paired
    for tokens, mask, ids, phones_mask, lang in zip(paired["tokens"], paired["tokens_mask"], paired["phones"],
                                                    paired["phones_mask"], paired["lang"]):
      said = phones.phonemize(vocab.decode(tokens[mask == 1].tolist()), languages.all_languages()[lang].code)
      assert said and phones_mask.sum() > 0
      np.testing.assert_array_equal(ids[phones_mask == 1], phones.encode(said)[:320])


def test_paired_phones_and_length_buckets_fail_at_start():
  with pytest.raises(ValueError, match="paired_phones_length does not work with paired_buckets"):
    pipeline.make_step_iterator(speech_batch_size=0, text_batch_size=0, paired_batch_size=2, speech_samples=1,
                                text_length=1, paired_samples=16000, paired_text_length=16,
                                paired_buckets=[(8000, 8, 4)], paired_phones_length=16)
