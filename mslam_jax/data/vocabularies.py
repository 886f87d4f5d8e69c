"""Vocabularies: the shared character vocabulary (mSLAM) and a SentencePiece option (SLAM).

Both are `seqio.Vocabulary` objects with the same reserved ids, so a model, a Task or a CTC head
never needs to know which one it got:

  PAD=0, EOS=1, UNK=2, MASK=3 (masked-LM input), BLANK=4 (CTC blank); symbols from 5.

The character vocabulary maps each Unicode code point of NFC-normalized text to an id. It is built
from the text streams, keeps at most `max_size` ids (the most frequent characters win when there
are more), and lives in a directory as `characters.json`. Python (`encode`/`decode`) and
TensorFlow (`encode_tf`/`decode_tf`, for tokenizing inside tf.data) give the same ids.
"""
import collections
import functools
import json
import logging
import os
import unicodedata
from typing import Iterable, Optional, Sequence

import gin
import seqio
import tensorflow as tf
from etils import epath

from mslam_jax.data.special_ids import BLANK_ID, EOS_ID, MASK_ID, NUM_RESERVED, PAD_ID, RESERVED_NAMES, UNK_ID

MAX_SIZE = 4096
UNK_PIECE = "\u2047"  # what decode shows for an unknown symbol, as SentencePiece does

VOCAB_FILE = "characters.json"
SENTENCEPIECE_PREFIX = "spm"
_FORMAT = "mslam_jax.character_vocabulary"

# Code points that carry no text (control, surrogate, unassigned, private use): they map to UNK.
_EXCLUDED_CATEGORIES = frozenset({"Cc", "Cs", "Cn", "Co"})


def normalize(text: str) -> str:
  return unicodedata.normalize("NFC", text)


def _is_symbol(char: str) -> bool:
  return unicodedata.category(char) not in _EXCLUDED_CATEGORIES


class CharacterVocabulary(seqio.Vocabulary):
  """A character (Unicode code point) vocabulary with the project's reserved ids."""

  def __init__(self, characters: Sequence[str]):
    """`characters[i]` gets id NUM_RESERVED + i; each must be one NFC code point, no repeats."""
    characters = list(characters)
    if len(characters) + NUM_RESERVED > MAX_SIZE:
      raise ValueError(f"{len(characters)} characters + {NUM_RESERVED} reserved ids exceed {MAX_SIZE}")
    for char in characters:
      if len(char) != 1:
        raise ValueError(f"vocabulary symbols are single code points, got {char!r}")
    if len(set(characters)) != len(characters):
      raise ValueError("vocabulary characters repeat")
    self._characters = characters
    self._char_to_id = {c: i + NUM_RESERVED for i, c in enumerate(characters)}
    super().__init__(extra_ids=0)

  # -- construction and storage ------------------------------------------------------------------
  @classmethod
  def build(cls, texts: Iterable[str], max_size: int = MAX_SIZE) -> "CharacterVocabulary":
    """Counts NFC characters of `texts`; keeps the `max_size - 5` most frequent (ties by code point)."""
    if not NUM_RESERVED < max_size <= MAX_SIZE:
      raise ValueError(f"max_size must be in ({NUM_RESERVED}, {MAX_SIZE}], got {max_size}")
    counts = collections.Counter()
    for text in texts:
      counts.update(normalize(text))
    symbols = [c for c in counts if _is_symbol(c)]
    symbols.sort(key=lambda c: (-counts[c], ord(c)))
    kept = symbols[:max_size - NUM_RESERVED]
    if len(symbols) > len(kept):
      dropped = sum(counts[c] for c in symbols[len(kept):])
      logging.info("Character vocabulary keeps %d of %d characters; %d occurrences become UNK.",
                   len(kept), len(symbols), dropped)
    # Ids in code-point order: stable and readable; which characters are kept is what frequency decides.
    return cls(sorted(kept))

  def save(self, directory: str) -> str:
    """Writes `directory`/characters.json (local or remote: gs://..., through etils.epath)."""
    epath.Path(directory).mkdir(parents=True, exist_ok=True)
    path = os.path.join(directory, VOCAB_FILE)
    payload = {
        "format": _FORMAT,
        "version": 1,
        "normalization": "NFC",
        "reserved": {name: i for i, name in enumerate(RESERVED_NAMES)},
        "characters": self._characters,
    }
    epath.Path(path).write_text(json.dumps(payload, ensure_ascii=False, indent=0), encoding="utf-8")
    return path

  @classmethod
  def load(cls, directory: str) -> "CharacterVocabulary":
    path = os.path.join(directory, VOCAB_FILE)
    payload = json.loads(epath.Path(path).read_text(encoding="utf-8"))
    if payload.get("format") != _FORMAT:
      raise ValueError(f"{path} is not a character vocabulary (format={payload.get('format')!r})")
    return cls(payload["characters"])

  # -- seqio.Vocabulary --------------------------------------------------------------------------
  @property
  def characters(self) -> Sequence[str]:
    return tuple(self._characters)

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  def mask_id(self) -> int:
    return MASK_ID

  @property
  def blank_id(self) -> int:
    return BLANK_ID

  @property
  def _base_vocab_size(self) -> int:
    return NUM_RESERVED + len(self._characters)

  def _encode(self, s: str) -> Sequence[int]:
    return [self._char_to_id.get(c, UNK_ID) for c in normalize(s)]

  def _piece(self, i: int) -> str:
    if i >= NUM_RESERVED:
      return self._characters[i - NUM_RESERVED]
    return UNK_PIECE if i == UNK_ID else ""

  def _decode(self, ids: Iterable[int]) -> str:
    return "".join(self._piece(int(i)) for i in ids)

  @functools.cached_property
  def _tf_tables(self):
    # Made outside any tf.function/dataset graph so every trace captures the same resource.
    with tf.init_scope():
      keys = tf.constant([ord(c) for c in self._characters] or [-1], tf.int64)
      values = tf.constant(list(range(NUM_RESERVED, self._base_vocab_size)) or [UNK_ID], tf.int32)
      table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), UNK_ID)
      pieces = tf.constant([self._piece(i) for i in range(self._base_vocab_size)], tf.string)
    return table, pieces

  def _encode_tf(self, s: tf.Tensor) -> tf.Tensor:
    """String tensor (any rank) -> int32 ids (ragged below a scalar, as seqio's SentencePiece)."""
    import tensorflow_text as tf_text  # pylint: disable=g-import-not-at-top
    table, _ = self._tf_tables
    s = tf_text.normalize_utf8(s, "NFC")
    code_points = tf.strings.unicode_decode(s, "UTF-8", errors="replace")
    return tf.ragged.map_flat_values(lambda cp: table.lookup(tf.cast(cp, tf.int64)), code_points)

  def _decode_tf(self, ids: tf.Tensor) -> tf.Tensor:
    """int ids [..., L] -> string [...]; reserved ids vanish, UNK shows as U+2047."""
    _, pieces = self._tf_tables
    ids = tf.convert_to_tensor(ids)
    ids = tf.where((ids >= 0) & (ids < self._base_vocab_size), ids, UNK_ID)
    return tf.strings.reduce_join(tf.gather(pieces, ids), axis=-1)

  def __eq__(self, other):
    return isinstance(other, CharacterVocabulary) and self._characters == other._characters

  def __hash__(self):
    return hash(tuple(self._characters))

  def __repr__(self):
    return f"CharacterVocabulary(size={self.vocab_size})"


def train_sentencepiece(texts: Iterable[str], directory: str, vocab_size: int,
                        model_type: str = "unigram",
                        character_coverage: float = 0.9995,
                        seed_sentencepiece_size: int = 100_000) -> seqio.SentencePieceVocabulary:
  """Trains a SentencePiece model offline into `{directory}/spm.model` with the reserved ids above.

  `vocab_size` is an upper bound: on a small corpus the trainer stops at what the text supports.
  """
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)
  prefix = os.path.join(directory, SENTENCEPIECE_PREFIX)
  sentences = [normalize(t) for t in texts if t and t.strip()]
  if not sentences:
    raise ValueError("train_sentencepiece got no non-empty text")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sentences),
      model_prefix=prefix,
      vocab_size=vocab_size,
      model_type=model_type,
      character_coverage=character_coverage,
      seed_sentencepiece_size=seed_sentencepiece_size,
      hard_vocab_limit=False,
      pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      # The two user-defined symbols take the next ids, 3 and 4: MASK_ID and BLANK_ID.
      user_defined_symbols=list(RESERVED_NAMES[MASK_ID:BLANK_ID + 1]),
      normalization_rule_name="nfkc",
      minloglevel=2,
  )
  return seqio.SentencePieceVocabulary(prefix + ".model")


def load_sentencepiece(directory: str) -> seqio.SentencePieceVocabulary:
  return seqio.SentencePieceVocabulary(os.path.join(directory, SENTENCEPIECE_PREFIX + ".model"))


def load_vocabulary(directory: str) -> seqio.Vocabulary:
  """The vocabulary saved in `directory`: characters.json if present, else spm.model."""
  if epath.Path(directory, VOCAB_FILE).exists():
    return CharacterVocabulary.load(directory)
  if epath.Path(directory, SENTENCEPIECE_PREFIX + ".model").exists():  # seqio reads it with tf.io.gfile
    return load_sentencepiece(directory)
  raise FileNotFoundError(f"no {VOCAB_FILE} nor {SENTENCEPIECE_PREFIX}.model in {directory}")


def vocabulary_for_corpus(corpus_dir: str) -> seqio.Vocabulary:
  return load_vocabulary(os.path.join(corpus_dir, "vocab"))


@gin.configurable
def corpus_vocab_size(corpus_dir: Optional[str] = None, max_size: int = MAX_SIZE, multiple: int = 128) -> int:
  """The model's vocabulary size for a corpus: its vocabulary's size rounded up to `multiple`
  (lane-friendly logits), at most `max_size`; `max_size` when no corpus is given (e.g. `mslam
  compile` of a size before any data exists).

  A fixed 4,096 over a corpus that uses ~100 characters makes text MLM spend its early steps pushing
  down thousands of unused logits; the corpus-sized head reaches the unigram level in a few dozen.
  """
  if not isinstance(corpus_dir, str) or not corpus_dir:  # unset, or the REQUIRED macro left unbound
    return max_size
  return model_vocab_size(vocabulary_for_corpus(corpus_dir).vocab_size, max_size, multiple,
                          f"the vocabulary of {corpus_dir}", "corpus_vocab_size.max_size")


def model_vocab_size(size: int, max_size: int, multiple: int, what: str, setting: str, hint: str = "") -> int:
  """`size` ids rounded up to `multiple`, at most `max_size`; ValueError naming `what` and the gin
  `setting` when the vocabulary itself is larger."""
  if size > max_size:
    raise ValueError(f"{what} has {size} ids, more than {setting}={max_size}{hint}")
  return min(max_size, -(-size // multiple) * multiple)
