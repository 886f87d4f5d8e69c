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
_LATIN = WORD_BOUNDARY_ID + 1
_IPA_FIRST, _IPA_LAST = 0x250, 0x36F
_IPA = _LATIN + 26
_EXTRA_FIRST = _IPA + (_IPA_LAST - _IPA_FIRST + 1)
VOCAB_SIZE = _EXTRA_FIRST + len(_EXTRA)


def encode(ipa: str) -> np.ndarray:
  """IPA text -> int32 ids (runs of whitespace -> one WORD_BOUNDARY_ID, none at either end)."""
  out = []
  for ch in " ".join(ipa.split()):
    c = ord(ch)
    if ch == " ":
      out.append(WORD_BOUNDARY_ID)
    elif "a" <= ch <= "z":
      out.append(_LATIN + c - ord("a"))
    elif _IPA_FIRST <= c <= _IPA_LAST:
      out.append(_IPA + c - _IPA_FIRST)
    elif ch in _EXTRA:
      out.append(_EXTRA_FIRST + _EXTRA.index(ch))
    else:
      out.append(special_ids.UNK_ID)
  return np.asarray(out, np.int32)


def decode(ids) -> str:
  """The inverse of `encode` (UNK_ID -> "?"; reserved ids are skipped)."""
  out = []
  for i in np.asarray(ids).tolist():
    if i == WORD_BOUNDARY_ID:
      out.append(" ")
    elif _LATIN <= i < _IPA:
      out.append(chr(ord("a") + i - _LATIN))
    elif _IPA <= i < _EXTRA_FIRST:
      out.append(chr(_IPA_FIRST + i - _IPA))
    elif _EXTRA_FIRST <= i < VOCAB_SIZE:
      out.append(_EXTRA[i - _EXTRA_FIRST])
    elif i == special_ids.UNK_ID:
      out.append("?")
  return "".join(out)


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
  """`encode` inside tf.data: a scalar UTF-8 IPA string tensor -> int32 [n] ids (same ids)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  c = tf.strings.unicode_decode(tf.strings.strip(ipa), "UTF-8")
  extra = tf.constant([ord(ch) for ch in _EXTRA], tf.int32)
  hit = tf.equal(c[:, None], extra[None, :])
  ids = tf.fill(tf.shape(c), special_ids.UNK_ID)
  ids = tf.where(tf.reduce_any(hit, axis=1), _EXTRA_FIRST + tf.argmax(tf.cast(hit, tf.int32), axis=1,
                                                                      output_type=tf.int32), ids)
  ids = tf.where((c >= _IPA_FIRST) & (c <= _IPA_LAST), _IPA + c - _IPA_FIRST, ids)
  ids = tf.where((c >= ord("a")) & (c <= ord("z")), _LATIN + c - ord("a"), ids)
  return tf.where(tf.equal(c, ord(" ")), WORD_BOUNDARY_ID, ids)
