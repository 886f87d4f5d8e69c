"""SeqIO preprocessors for corpus records (mslam_jax/data/records.py) and the drop counters they share.

Every Task over record shards reads them with `seqio.TFExampleDataSource(...,
feature_description=training_feature_description())`, then runs `decode_audio` (speech/paired)
-> `tokenize_text` (text/paired) -> `add_lang_id` -> `filter_empty`. Anything removed inside
tf.data is counted in a named counter (`drop_counts()`), since a long job skips bad items instead
of crashing and the trainer reports how many it skipped.
"""
import functools
import logging
import threading
from typing import Dict, Sequence

import seqio
import tensorflow as tf

from mslam_jax.data import records

# Only the fields the training streams use are parsed: words and timings stay on disk for evaluation.
_TRAINING_FIELDS = ("id", "lang", "text", "audio_pcm16", "num_samples")

_counters: Dict[str, tf.Variable] = {}
_counters_lock = threading.Lock()


def counter(name: str) -> tf.Variable:
  """A process-wide int64 counter for items dropped or altered inside tf.data, made on first use."""
  with _counters_lock:
    if name not in _counters:
      with tf.init_scope():
        _counters[name] = tf.Variable(0, dtype=tf.int64, trainable=False, name=name.replace("/", "_"))
    return _counters[name]


def drop_counts() -> Dict[str, int]:
  """Current value of every counter, e.g. {'empty_audio/builtin_speech_eng': 3}."""
  with _counters_lock:
    return {name: int(v.numpy()) for name, v in sorted(_counters.items())}


def count_if(flag: tf.Tensor, name: str) -> tf.Tensor:
  """Adds `flag` (bool scalar) to counter `name`; returns `flag` (to chain inside filters)."""
  var = counter(name)
  with tf.control_dependencies([var.assign_add(tf.cast(flag, tf.int64))]):
    return tf.identity(flag)


def training_feature_description():
  """The parse spec of the record fields training reads (a subset of records.feature_description)."""
  return {k: v for k, v in records.feature_description().items() if k in _TRAINING_FIELDS}


@seqio.map_over_dataset
def decode_audio(ex):
  """int16 PCM bytes -> `audio` float32 [n] in [-1, 1)."""
  ex = dict(ex)
  pcm = tf.io.decode_raw(ex.pop("audio_pcm16"), tf.int16, little_endian=True)
  ex["audio"] = tf.cast(pcm, tf.float32) / 32768.0
  return ex


def tokenize_text(dataset: tf.data.Dataset, vocabulary: seqio.Vocabulary,
                  key: str = "text", output_key: str = "tokens") -> tf.data.Dataset:
  """`text` -> int32 `tokens` with the corpus vocabulary (no EOS: text batches carry none)."""
  def fn(ex):
    ex = dict(ex)
    ex[output_key] = tf.cast(vocabulary.encode_tf(ex[key]), tf.int32)
    return ex
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def add_lang_id(dataset: tf.data.Dataset, lang_id: int) -> tf.data.Dataset:
  """Every item of a per-language Task gets the registry's id of that language as `lang`."""
  def fn(ex):
    ex = dict(ex)
    ex["lang"] = tf.constant(lang_id, tf.int32)
    return ex
  return dataset.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def filter_empty(dataset: tf.data.Dataset, keys: Sequence[str], counter_prefix: str) -> tf.data.Dataset:
  """Drops items where any of `keys` has no elements; counts them as `empty_{key}/{prefix}`."""
  def keep(ex):
    ok = tf.constant(True)
    for key in keys:
      empty = tf.equal(tf.size(ex[key]), 0)
      ok = tf.logical_and(ok, tf.logical_not(count_if(empty, f"empty_{key}/{counter_prefix}")))
    return ok
  return dataset.filter(keep)


def select_features(dataset: tf.data.Dataset, keys: Sequence[str]) -> tf.data.Dataset:
  return dataset.map(lambda ex: {k: ex[k] for k in keys}, num_parallel_calls=tf.data.AUTOTUNE)


def record_preprocessors(stream: str, vocabulary: seqio.Vocabulary, lang_id: int, task_name: str):
  """The preprocessor list of a per-language Task of `stream` over records.py shards."""
  steps = []
  keys = []
  if stream in ("speech", "paired"):
    steps.append(decode_audio)
    keys.append("audio")
  if stream in ("text", "paired"):
    steps.append(functools.partial(tokenize_text, vocabulary=vocabulary))
    keys.append("tokens")
  if stream not in records.STREAMS:
    raise ValueError(f"unknown stream {stream!r}; expected one of {records.STREAMS}")
  steps.append(functools.partial(add_lang_id, lang_id=lang_id))
  steps.append(functools.partial(filter_empty, keys=tuple(keys), counter_prefix=task_name))
  steps.append(functools.partial(select_features, keys=tuple(keys) + ("lang",)))
  logging.debug("Task %s: %d preprocessors", task_name, len(steps))
  return steps
