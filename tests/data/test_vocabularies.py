"""Tests of the character vocabulary and the SentencePiece option."""
import unicodedata

import numpy as np
import pytest
import tensorflow as tf

from mslam_jax.data import vocabularies as V

MULTILINGUAL = [
    "The quick brown fox jumps over the lazy dog.",
    "Größere Übungen für Köln und Zürich",
    "Съешь же ещё этих мягких французских булок",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία",
    "こんにちは世界、日本語のテキスト",
    "नमस्ते दुनिया, यह हिन्दी है",
    "مرحبا بالعالم",
    "שלום עולם",
    "Tiếng Việt có dấu",
    "안녕하세요 세계",
]


@pytest.fixture(scope="module")
def vocab():
  return V.CharacterVocabulary.build(MULTILINGUAL)


def test_round_trip_multilingual_text(vocab):
  for text in MULTILINGUAL:
    ids = vocab.encode(text)
    assert len(ids) == len(unicodedata.normalize("NFC", text))
    assert min(ids) >= V.NUM_RESERVED
    assert vocab.decode(ids) == unicodedata.normalize("NFC", text)


def test_reserved_ids(vocab):
  assert (V.PAD_ID, V.EOS_ID, V.UNK_ID, V.MASK_ID, V.BLANK_ID) == (0, 1, 2, 3, 4)
  assert (vocab.pad_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2)
  assert (vocab.mask_id, vocab.blank_id) == (3, 4)
  chars = "".join(sorted(set("".join(MULTILINGUAL))))
  assert vocab.vocab_size == V.NUM_RESERVED + len(chars)
  # Pad, mask and blank vanish on decode; decoding stops at EOS; UNK shows as a visible mark.
  a, b = vocab.encode("ab")
  assert vocab.decode([a, V.PAD_ID, V.MASK_ID, V.BLANK_ID, b]) == "ab"
  assert vocab.decode([a, V.EOS_ID, b]) == "a"
  assert vocab.decode([a, V.UNK_ID]) == "a" + V.UNK_PIECE


def test_unknown_characters_map_to_unk(vocab):
  ids = vocab.encode("a€\u0007z")  # € unseen, BEL is a control character
  assert ids[1] == V.UNK_ID and ids[2] == V.UNK_ID
  assert ids[0] != V.UNK_ID


def test_nfc_normalization(vocab):
  decomposed = "Gro\u0308\u00dfere"  # o + combining diaeresis
  assert vocab.encode(decomposed) == vocab.encode("Größere")


def test_size_cap_keeps_most_frequent_characters():
  texts = ["a" * 50 + "b" * 40 + "c" * 30 + "d" * 20 + "e" * 10 + "f"]
  small = V.CharacterVocabulary.build(texts, max_size=V.NUM_RESERVED + 3)
  assert small.vocab_size == 8
  assert set(small.characters) == {"a", "b", "c"}
  assert small.encode("d") == [V.UNK_ID]
  with pytest.raises(ValueError):
    V.CharacterVocabulary.build(texts, max_size=5000)
  many = ["".join(chr(0x4E00 + i) for i in range(5000))]
  capped = V.CharacterVocabulary.build(many)
  assert capped.vocab_size == V.MAX_SIZE


def test_save_load(tmp_path, vocab):
  vocab.save(str(tmp_path))
  loaded = V.CharacterVocabulary.load(str(tmp_path))
  assert loaded == vocab
  assert loaded.encode(MULTILINGUAL[4]) == vocab.encode(MULTILINGUAL[4])
  assert isinstance(V.load_vocabulary(str(tmp_path)), V.CharacterVocabulary)


def test_tf_and_python_paths_agree(vocab):
  inputs = MULTILINGUAL + ["a€z", "Gro\u0308\u00dfere", ""]
  for text in inputs:
    assert vocab.encode_tf(tf.constant(text)).numpy().tolist() == vocab.encode(text)
  batched = vocab.encode_tf(tf.constant(inputs))
  assert batched.to_list() == [vocab.encode(t) for t in inputs]
  ids = vocab.encode(MULTILINGUAL[2])
  rows = [ids + [V.PAD_ID] * 3, [V.UNK_ID, 9999] + ids[:2] + [V.EOS_ID] + ids]
  width = max(map(len, rows))
  padded = tf.constant([r + [V.PAD_ID] * (width - len(r)) for r in rows])
  decoded = [s.decode() for s in vocab.decode_tf(padded).numpy()]
  assert decoded == [vocab.decode(row) for row in padded.numpy().tolist()]


def test_tokenizes_inside_tf_data(vocab):
  ds = tf.data.Dataset.from_tensor_slices(MULTILINGUAL).map(vocab.encode_tf)
  assert [x.tolist() for x in ds.as_numpy_iterator()] == [vocab.encode(t) for t in MULTILINGUAL]


def test_sentencepiece_option_keeps_reserved_ids(tmp_path):
  sp = V.train_sentencepiece(MULTILINGUAL * 20, str(tmp_path / "spm"), vocab_size=400)
  pieces = [sp.tokenizer.id_to_piece(i) for i in range(V.NUM_RESERVED)]
  assert pieces[V.MASK_ID] == "<mask>" and pieces[V.BLANK_ID] == "<blank>"
  assert (sp.pad_id, sp.eos_id, sp.unk_id) == (V.PAD_ID, V.EOS_ID, V.UNK_ID)
  ids = sp.encode(MULTILINGUAL[0])
  assert min(ids) >= V.NUM_RESERVED and sp.decode(ids) == MULTILINGUAL[0]
  assert np.array_equal(sp.encode_tf(tf.constant(MULTILINGUAL[0])).numpy(), ids)
  reloaded = V.load_vocabulary(str(tmp_path / "spm"))
  assert reloaded.encode(MULTILINGUAL[1]) == sp.encode(MULTILINGUAL[1])
