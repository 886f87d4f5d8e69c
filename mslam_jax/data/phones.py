"""Text as phones: eSpeak NG's IPA for a language's text, as ids of one inventory shared by every
language (the input of phone-level text injection, `MSLAMModel.text_ctc_input = "phones"`).

Characters spell the same sound differently in every language ("w" is /v/ in German and Afrikaans
and /w/ in English), so text injection over characters is mostly a copy task for the shared layers
and teaches them little of how a language writes what is said. IPA phones are what the speech
sounds like, one symbol set for all languages: injected as the input of a CTC head that writes the
language's characters, they make the shared layers learn each language's spelling of its sounds
from text alone (Maestro-U's phone-to-grapheme injection, Chen et al. 2022, arXiv 2210.10027).

Corpora store the IPA with each text item (records.Utterance.phones, written where eSpeak has a
voice for the language), so training reads it like any other field and runs no Python per item.
Ids are per Unicode code point of the IPA string (stress, length and diacritics included), so the
inventory needs no corpus pass and every eSpeak language maps into it: the word boundary (a space),
a-z, the IPA blocks U+0250-U+036F, the few IPA letters outside them and tone numbers. Anything
else (eSpeak's syllable marks "." and "-") is UNK_ID.
The reserved ids (special_ids) keep their meaning: 0 pads, MASK_ID masks.
"""
import functools

import numpy as np

from mslam_jax.data import special_ids

# IPA letters outside a-z and U+0250-U+036F, and the tone numbers of eSpeak's tonal languages.
_EXTRA = "æçðøħŋœβθχ0123456789"
WORD_BOUNDARY_ID = special_ids.NUM_RESERVED
# The inventory, in id order from WORD_BOUNDARY_ID: the one table encode, decode and encode_tf read.
_SYMBOLS = " " + "abcdefghijklmnopqrstuvwxyz" + "".join(map(chr, range(0x250, 0x370))) + _EXTRA
VOCAB_SIZE = WORD_BOUNDARY_ID + len(_SYMBOLS)
# Code point -> id (UNK_ID for any other below the table's end).
_ID_OF_CODE_POINT = np.full(max(map(ord, _SYMBOLS)) + 1, special_ids.UNK_ID, np.int32)
_ID_OF_CODE_POINT[[ord(ch) for ch in _SYMBOLS]] = np.arange(WORD_BOUNDARY_ID, VOCAB_SIZE, dtype=np.int32)


def encode(ipa: str) -> np.ndarray:
  """IPA text -> int32 ids (runs of whitespace -> one WORD_BOUNDARY_ID, none at either end)."""
  code_points = np.asarray([ord(ch) for ch in " ".join(ipa.split())], np.int64)
  known = code_points < len(_ID_OF_CODE_POINT)
  return np.where(known, _ID_OF_CODE_POINT[np.where(known, code_points, 0)], special_ids.UNK_ID).astype(np.int32)


def decode(ids) -> str:
  """The inverse of `encode` (UNK_ID -> "?"; reserved ids are skipped)."""
  return "".join(_SYMBOLS[i - WORD_BOUNDARY_ID] if WORD_BOUNDARY_ID <= i < VOCAB_SIZE else
                 "?" if i == special_ids.UNK_ID else "" for i in np.asarray(ids).tolist())


@functools.cache
def voice_of(lang: str) -> str:
  """The eSpeak voice that phonemizes language `lang` (ISO 639-3), "" when it has none."""
  from mslam_jax.data import languages  # pylint: disable=g-import-not-at-top  (reads eSpeak's voice list)
  try:
    return languages.get(lang).espeak_voice
  except (KeyError, ValueError):
    return ""


def phonemize(text: str, lang: str) -> str:
  """`text` of language `lang` as eSpeak's IPA, words separated by single spaces; "" when eSpeak
  has no voice for the language (phone-level text injection then leaves the item out)."""
  from mslam_jax.data import espeak  # pylint: disable=g-import-not-at-top
  voice = voice_of(lang)
  return " ".join(espeak.text_to_phonemes(text, voice).split()) if voice and text.strip() else ""


def encode_tf(ipa):
  """`encode` inside tf.data: a scalar UTF-8 IPA string tensor -> int32 [n] ids (same ids; stored
  phones are whitespace-normalized already)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  code_points = tf.strings.unicode_decode(tf.strings.strip(ipa), "UTF-8")
  known = code_points < len(_ID_OF_CODE_POINT)
  ids = tf.gather(tf.constant(_ID_OF_CODE_POINT), tf.where(known, code_points, 0))
  return tf.where(known, ids, special_ids.UNK_ID)
