"""SeqIO preprocessors for corpus records (mslam_jax/data/records.py) and the drop counters they share.

Every Task over record shards reads them with `seqio.TFExampleDataSource(...,
feature_description=training_feature_description())`, then `prepare_records`: decode the int16
PCM (speech/paired), tokenize the text (text/paired), attach the language id, drop empty items.
Anything removed inside tf.data is counted in a named counter (`drop_counts()`), since a long job
skips bad items instead of crashing and the trainer reports how many it skipped.
"""
import functools
import threading
from typing import Dict, Optional

import seqio
import tensorflow as tf

from mslam_jax.data import phones as phones_lib
from mslam_jax.data import records

# Only the fields a training stream uses are parsed: ids, voices and word timings stay on disk for
# evaluation (the speech stream's text too: unlabeled speech must not leak its transcript).
_STREAM_FIELDS = {"speech": ("audio_pcm16",), "text": ("text",), "paired": ("audio_pcm16", "text")}

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
  """Non-zero counters, e.g. {'empty_audio/builtin_speech_eng': 3, 'cropped/builtin_speech@train': 9}."""
  with _counters_lock:
    values = {name: int(v.numpy()) for name, v in sorted(_counters.items())}
  return {name: n for name, n in values.items() if n}


def count_if(flag: tf.Tensor, name: str) -> tf.Tensor:
  """Adds `flag` (bool scalar) to counter `name`; returns `flag` (to chain inside filters)."""
  var = counter(name)
  with tf.control_dependencies([var.assign_add(tf.cast(flag, tf.int64))]):
    return tf.identity(flag)


def training_feature_description(stream: str, phones: bool = False):
  """The parse spec of the record fields `stream` reads (a subset of records.feature_description);
  `phones`: the stored phones too (text and paired streams; prepare_records)."""
  fields = _STREAM_FIELDS[stream] + (("phones",) if phones and stream != "speech" else ())
  return {k: v for k, v in records.feature_description().items() if k in fields}


def decode_audio(pcm16: tf.Tensor) -> tf.Tensor:
  """int16 little-endian PCM bytes -> float32 [n] in [-1, 1)."""
  return tf.cast(tf.io.decode_raw(pcm16, tf.int16, little_endian=True), tf.float32) / 32768.0


def prepare_records(dataset: tf.data.Dataset, stream: str, vocabulary: Optional[seqio.Vocabulary],
                    lang_id: int, counter_prefix: str, phones: bool = False) -> tf.data.Dataset:
  """Parsed records of `stream` -> {audio f32[n]?, tokens i32[m]?, lang i32[]}, empty items dropped.

  `audio` (speech, paired) is the decoded PCM; `tokens` (text, paired) is the text in `vocabulary`
  without EOS (text batches carry none); `lang` is the registry id of the Task's language. Items
  whose audio or tokens come out empty are dropped and counted as `empty_{key}/{counter_prefix}`.
  `phones` (text and paired streams) adds `phones` i32[k]: the record's stored IPA as
  mslam_jax.data.phones ids; an item without (its language has no eSpeak voice, or the corpus was
  written before phones were stored) gets none, counted as `no_phones/{counter_prefix}` (the item
  stays: only phone-level text injection skips it).
  One map and one filter per Task: a corpus has hundreds of Tasks, and each traced tf.data
  function costs start-up time.
  """
  if stream not in records.STREAMS:
    raise ValueError(f"unknown stream {stream!r}; expected one of {records.STREAMS}")
  keys = (("audio",) if stream in ("speech", "paired") else ()) + (
      ("tokens",) if stream in ("text", "paired") else ())
  if "tokens" in keys and vocabulary is None:
    raise ValueError(f"stream {stream!r} needs a vocabulary")
  if phones and stream == "speech":
    raise ValueError("the speech stream has no text, so no phones")

  @tf.autograph.experimental.do_not_convert
  def convert(ex):
    out = {"lang": tf.constant(lang_id, tf.int32)}
    if "audio" in keys:
      out["audio"] = decode_audio(ex["audio_pcm16"])
    if "tokens" in keys:
      out["tokens"] = tf.cast(vocabulary.encode_tf(ex["text"]), tf.int32)
    if phones:
      ids = phones_lib.encode_tf(ex["phones"])
      count_if(tf.equal(tf.size(ids), 0), f"no_phones/{counter_prefix}")
      out["phones"] = ids
    return out

  @tf.autograph.experimental.do_not_convert
  def keep(ex):
    ok = tf.constant(True)
    for key in keys:
      empty = tf.equal(tf.size(ex[key]), 0)
      ok = tf.logical_and(ok, tf.logical_not(count_if(empty, f"empty_{key}/{counter_prefix}")))
    return ok

  # Sequential on purpose: a Mixture pulls from one of its (hundreds of) Tasks at a time, and a
  # parallel map per Task would start its own worker thread each (see LeanMixture).
  return dataset.map(convert).filter(keep)


def record_preprocessors(stream: str, vocabulary: Optional[seqio.Vocabulary], lang_id: int,
                         task_name: str, phones: bool = False):
  """The preprocessor list of a per-language Task of `stream` over records.py shards (`phones`: the
  text's phones too, in the text and paired streams; prepare_records)."""
  return [functools.partial(prepare_records, stream=stream, vocabulary=vocabulary, lang_id=lang_id,
                            counter_prefix=task_name, phones=phones and stream != "speech")]
