"""Evaluation data: utterances read straight from a corpus directory, and batched encoding.

Evaluators see whole utterances (audio, transcript, word timings), not the training pipeline's
fixed-size packed batches, so they read the records themselves. Reads are cached per process: a
periodic evaluation every N steps re-reads nothing.
"""
import functools
import json
import logging
import os
from typing import Any, Callable, Sequence

import numpy as np
from etils import epath

from mslam_jax import storage
from mslam_jax.data import records

SAMPLE_RATE = records.SAMPLE_RATE
# Shape buckets: on CPU a compile costs more than encoding a few padded seconds, so they are coarse.
AUDIO_BUCKET = 4 * SAMPLE_RATE
TEXT_BUCKET = 64


def corpus_languages(corpus_dir: str, stream: str, split: str = "test") -> list[str]:
  """Languages that have a `split` shard set in `stream` (sorted)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (the shards' filesystem: local, gs://, ...)
  langs = []
  for lang_dir in sorted(tf.io.gfile.glob(os.path.join(corpus_dir, stream, "*"))):
    lang = os.path.basename(lang_dir.rstrip("/"))
    if tf.io.gfile.glob(os.path.join(corpus_dir, records.shard_pattern(stream, lang, split))):
      langs.append(lang)
  return langs


@functools.lru_cache(maxsize=32)
def _read_cached(corpus_dir: str, stream: str, split: str, langs: tuple[str, ...],
                 max_per_lang: int | None) -> tuple[records.Utterance, ...]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  out, bad = [], 0
  for lang in langs:
    files = sorted(tf.io.gfile.glob(os.path.join(corpus_dir, records.shard_pattern(stream, lang, split))))
    if not files:
      logging.warning("No %s/%s/%s shards in %s", stream, lang, split, corpus_dir)
      continue
    count = 0
    for raw in tf.data.TFRecordDataset(files).as_numpy_iterator():
      if max_per_lang is not None and count >= max_per_lang:
        break
      try:
        out.append(records.from_example_bytes(raw))
      except Exception as e:  # pylint: disable=broad-except
        bad += 1
        logging.warning("Skipping an unreadable record in %s/%s/%s: %s", stream, lang, split, e)
        continue
      count += 1
  if bad:
    logging.warning("Skipped %d unreadable records in %s", bad, corpus_dir)
  return tuple(out)


def read_utterances(corpus_dir: str, stream: str, split: str, langs: Sequence[str] | None = None,
                    max_per_lang: int | None = None) -> list[records.Utterance]:
  """Utterances of a split, language by language (record order within a language)."""
  if stream not in records.STREAMS or split not in records.SPLITS:
    raise ValueError(f"stream must be one of {records.STREAMS} and split one of {records.SPLITS}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not tf.io.gfile.isdir(corpus_dir):
    raise FileNotFoundError(f"corpus directory {corpus_dir!r} does not exist (set the evaluator's corpus_dir in gin)")
  langs = tuple(corpus_languages(corpus_dir, stream, split) if langs is None else langs)
  return list(_read_cached(storage.absolute(corpus_dir), stream, split, langs, max_per_lang))


def load_vocabulary(corpus_dir: str):
  """The corpus' vocabulary (character or SentencePiece, as the corpus was built)."""
  from mslam_jax.data import vocabularies  # pylint: disable=g-import-not-at-top
  if hasattr(vocabularies, "vocabulary_for_corpus"):
    return vocabularies.vocabulary_for_corpus(corpus_dir)
  return vocabularies.CharacterVocabulary.load(os.path.join(corpus_dir, "vocab"))


def load_manifest(corpus_dir: str) -> dict:
  path = epath.Path(corpus_dir) / "manifest.json"  # local or remote (gs://...)
  return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def held_out_languages(corpus_dir: str) -> list[str]:
  """Languages whose paired data pre-training never saw (the zero-shot test languages)."""
  return records.held_out_languages(load_manifest(corpus_dir))


def training_languages(corpus_dir: str) -> list[str]:
  """Languages with paired train data that are not held out (fine-tuning and in-domain tests)."""
  held_out = set(held_out_languages(corpus_dir))
  return [l for l in corpus_languages(corpus_dir, "paired", "train") if l not in held_out]


def _bucket(length: int, unit: int) -> int:
  """`unit` times the next power of two: few distinct shapes, so few compiles, at most 2x padding."""
  units = max(1, -(-length // unit))
  return unit * (1 << (units - 1).bit_length())


def _batches(items: Sequence[Any], batch_size: int):
  for start in range(0, len(items), batch_size):
    yield start, items[start:start + batch_size]


def batch_rows(count: int, batch_size: int, smallest: int = 1) -> int:
  """Rows of a batch that holds `count` items: `batch_size`, or the power of two at or above `count`
  (at least `smallest`) where that is smaller."""
  return min(batch_size, max(smallest, 1 << max(count - 1, 0).bit_length()))


def _pad_rows(rows: Sequence[Sequence[Any]], batch_size: int, multiple: int, dtype) -> tuple[np.ndarray, np.ndarray]:
  """[batch_size, N] rows and their mask; N bucketed (see _bucket) so that few shapes get compiled.

  Missing rows repeat the first utterance (not silence: an all-padding row can divide by zero in
  pooling); callers drop them.
  """
  length = _bucket(max(len(r) for r in rows), multiple)
  values = np.zeros([batch_size, length], dtype)
  mask = np.zeros([batch_size, length], np.int32)
  for i in range(batch_size):
    row = rows[i] if i < len(rows) else rows[0]
    values[i, :len(row)] = row
    mask[i, :len(row)] = 1
  return values, mask


def pad_audio(audios: Sequence[np.ndarray], batch_size: int, multiple: int) -> tuple[np.ndarray, np.ndarray]:
  """[batch_size, S] float32 audio and mask (see _pad_rows)."""
  return _pad_rows(audios, batch_size, multiple, np.float32)


def pad_tokens(token_lists: Sequence[Sequence[int]], batch_size: int, multiple: int) -> tuple[np.ndarray, np.ndarray]:
  """[batch_size, L] int32 tokens and mask (see _pad_rows)."""
  return _pad_rows(token_lists, batch_size, multiple, np.int32)


def jitted_encoders(model: Any, cross_modal: bool = False, cache: dict | None = None) -> tuple[Callable, Callable]:
  """jit(encode_speech), jit(encode_text) of a model (embed_speech / embed_text, the cross-modal
  space, with `cross_modal` where the model has them).

  `cache`: a dict owned by the caller's loop (an evaluation context's `compiled`), so that the
  evaluators of a sweep, and checkpoint after checkpoint, share the compiled programs.
  """
  cross_modal = cross_modal and hasattr(model, "embed_speech")
  speech, text = ((model.embed_speech, model.embed_text) if cross_modal
                  else (model.encode_speech, model.encode_text))
  return cached_jit(cache, ("encoders", cross_modal), model, speech, text)


def cached_jit(cache: dict | None, key: Any, model: Any, *fns: Callable) -> Any:
  """jax.jit of `fns` (one function or a tuple of them), kept in `cache` under `key` for as long as
  the cached entry is of this `model`."""
  import jax  # pylint: disable=g-import-not-at-top
  if cache is not None and key in cache and cache[key][0] is model:
    jitted = cache[key][1]
  else:
    jitted = tuple(jax.jit(fn) for fn in fns)
    if cache is not None:
      cache[key] = (model, jitted)
  return jitted if len(jitted) > 1 else jitted[0]


class Encoder:
  """Batched, jitted `encode_speech` / `encode_text` of one model and its parameters (with
  `cross_modal`, pooled vectors come from the model's cross-modal embedding heads).

  Shapes are bucketed (audio to 4, 8, 16, ... seconds, text to 64, 128, ... tokens) and the batch
  size is fixed, so an evaluation compiles a handful of programs however many utterances it encodes.
  `fit_small_calls` (the commands): a call with fewer items than `batch_size` pads them to the power
  of two at or above their count instead, so that one clip is encoded alone, not in a batch of 16
  copies (at most five batch shapes a length bucket).
  """

  def __init__(self, model: Any, params: Any, batch_size: int = 16, audio_multiple: int = AUDIO_BUCKET,
               text_multiple: int = TEXT_BUCKET, max_text_length: int = 512, cross_modal: bool = False,
               cache: dict | None = None, fit_small_calls: bool = False):
    from flax.core import meta  # pylint: disable=g-import-not-at-top
    self.model, self.params = model, meta.unbox(params)
    self.batch_size, self.audio_multiple, self.text_multiple = batch_size, audio_multiple, text_multiple
    self.max_text_length, self.fit_small_calls = max_text_length, fit_small_calls
    self._cache = cache if cache is not None else {}  # this encoder's programs, at least
    self._speech, self._text = jitted_encoders(model, cross_modal, self._cache)

  def _run(self, fn: Callable, items: Sequence[Any], pad: Callable, multiple: int, frames: bool):
    # Batches of similar lengths pad (and compile) less; results go back to the input order.
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    pooled, frame_out = [None] * len(items), [None] * len(items)
    rows = batch_rows(len(items), self.batch_size) if self.fit_small_calls else self.batch_size
    for start, _ in _batches(order, self.batch_size):
      index = order[start:start + self.batch_size]
      x, mask = pad([items[i] for i in index], rows, multiple)
      f, f_mask, p = fn(self.params, x, mask)
      p = np.asarray(p, np.float32)
      if frames:
        f, f_mask = np.asarray(f, np.float32), np.asarray(f_mask)
      for row, i in enumerate(index):
        pooled[i] = p[row]
        if frames:
          frame_out[i] = f[row, :int(f_mask[row].sum())]
    pooled_all = np.stack(pooled) if pooled else np.zeros([0, 0], np.float32)
    return (pooled_all, frame_out) if frames else pooled_all

  def speech(self, audios: Sequence[np.ndarray], frames: bool = False):
    """Pooled embeddings [N, D] (and, with `frames`, each utterance's valid frames [T_i, D])."""
    return self._run(self._speech, audios, pad_audio, self.audio_multiple, frames)

  def speech_statistics(self, audios: Sequence[np.ndarray], units: Sequence[int] | None = None) -> np.ndarray:
    """[N, 6 D] per-stage frame statistics (the model's `speech_statistics`: language-ID features);
    with `units`, the CTC head's phonotactics over those vocabulary ids beside them
    (`speech_statistics_and_phonotactics`, [N, 6 D + K + K^2])."""
    if units is None:
      stats = cached_jit(self._cache, ("speech_statistics",), self.model, self.model.speech_statistics)
    else:
      both = cached_jit(self._cache, ("speech_statistics_and_phonotactics",), self.model,
                        self.model.speech_statistics_and_phonotactics)
      ids = np.asarray(units, np.int32)
      stats = lambda params, x, mask: both(params, x, mask, ids)
    return self._run(lambda params, x, mask: (None, None, stats(params, x, mask)), audios, pad_audio,
                     self.audio_multiple, False)

  def speech_with_ctc(self, audios: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """`speech`'s pooled embeddings [N, D] and each utterance's [T_i, vocab] log-probabilities of the
    model's CTC head, from one pass (`embed_speech_with_ctc`)."""
    fn = cached_jit(self._cache, ("embed_speech_with_ctc",), self.model, self.model.embed_speech_with_ctc)
    return self._run(fn, audios, pad_audio, self.audio_multiple, True)

  def text(self, token_lists: Sequence[Sequence[int]], frames: bool = False):
    token_lists = [list(t)[:self.max_text_length] or [0] for t in token_lists]
    return self._run(self._text, token_lists, pad_tokens, self.text_multiple, frames)


def tokenize(vocab, texts: Sequence[str]) -> list[list[int]]:
  return [list(vocab.encode(t)) for t in texts]
