"""SeqIO Tasks and Mixtures of the built-in translation data (mslam_jax/data/translation.py), and
the batch iterator TranslationModel trains on.

`register_builtin_translation(CORPUS_DIR)` reads `CORPUS_DIR/translation/manifest.json` and registers

  * one Task per source language, `builtin_translation_{lang}`, emitting {audio f32[n] (the source
    speech), tokens i32[m] (the source text, for text-to-text batches), targets i32[k] (English,
    EOS-terminated), lang i32[]}, over the splits on disk, and
  * the Mixture `builtin_translation` of the training languages (rate n_l^(1/T) by items, as the
    corpus' Mixtures), and `builtin_translation_heldout` of the held-out (zero-shot) languages.

`translation_batches(...)` turns a Mixture into the fixed-size batches of models/translation.py:
{"speech": {audio, audio_mask, targets, targets_mask, lang}, "text": {tokens, tokens_mask, targets,
targets_mask, lang}} (a stream of batch size 0 is left out). Over-long audio, source text and
targets are cut (and counted in the preprocessors' drop counters).
"""
import functools
import logging
import os
from typing import Dict, Iterator, Optional

import gin
import numpy as np
import seqio
import tensorflow as tf

from mslam_jax import storage
from mslam_jax.data import feature_converters
from mslam_jax.data import preprocessors
from mslam_jax.data import translation
from mslam_jax.data import vocabularies

PREFIX = "builtin_translation"
_registered: Dict[str, tuple] = {}


def task_name(lang: str, prefix: str = PREFIX) -> str:
  return f"{prefix}_{lang}"


def heldout_mixture_name(prefix: str = PREFIX) -> str:
  return f"{prefix}_heldout"


def output_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
  return {
      "audio": seqio.Feature(feature_converters.AUDIO_VOCABULARY, add_eos=False, dtype=tf.float32, rank=1),
      "tokens": seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32, rank=1),
      "targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32, rank=1),
      "lang": seqio.Feature(feature_converters.LANG_VOCABULARY, add_eos=False, dtype=tf.int32, rank=0),
  }


def prepare(dataset: tf.data.Dataset, vocabulary: seqio.Vocabulary, lang_id: int, counter_prefix: str
            ) -> tf.data.Dataset:
  """Parsed records -> {audio, tokens, targets (+ EOS), lang}; items with no audio or an empty
  target are dropped and counted (`empty_{key}/{counter_prefix}`)."""

  @tf.autograph.experimental.do_not_convert
  def convert(ex):
    targets = tf.cast(vocabulary.encode_tf(ex["target"]), tf.int32)
    return {"audio": preprocessors.decode_audio(ex["audio_pcm16"]),
            "tokens": tf.cast(vocabulary.encode_tf(ex["text"]), tf.int32),
            "targets": tf.concat([targets, [vocabularies.EOS_ID]], axis=0),
            "lang": tf.constant(lang_id, tf.int32)}

  @tf.autograph.experimental.do_not_convert
  def keep(ex):
    ok = tf.constant(True)
    for key, minimum in (("audio", 1), ("tokens", 1), ("targets", 2)):
      short = tf.size(ex[key]) < minimum
      ok = tf.logical_and(ok, tf.logical_not(preprocessors.count_if(short, f"empty_{key}/{counter_prefix}")))
    return ok

  return dataset.map(convert).filter(keep)


def _remove(prefix: str) -> None:
  for name in list(seqio.MixtureRegistry.names()):
    if name.startswith(prefix):
      seqio.MixtureRegistry.remove(name)
  for name in list(seqio.TaskRegistry.names()):
    if name.startswith(prefix + "_"):
      seqio.TaskRegistry.remove(name)


@gin.configurable
def register_builtin_translation(corpus_dir: str = gin.REQUIRED, temperature: float = 3.0,
                                 shuffle_buffer_size: int = 64, prefix: str = PREFIX) -> Dict[str, str]:
  """Registers the Tasks and Mixtures (idempotent); returns {"train": mixture, "heldout": mixture}
  for those that have languages."""
  from mslam_jax.tasks import builtin  # pylint: disable=g-import-not-at-top  (temperature_rates, LeanMixture)
  if not isinstance(corpus_dir, (str, os.PathLike)):
    raise ValueError("register_builtin_translation.corpus_dir is not set: bind it (or the CORPUS_DIR macro)")
  corpus_dir = os.fspath(corpus_dir)
  manifest = translation.read_manifest(corpus_dir)
  if manifest is None:
    raise FileNotFoundError(f"{os.path.join(corpus_dir, translation.SUBDIR, translation.MANIFEST)} not found: "
                            "build it with mslam_jax.data.translation.build_translation_data(CORPUS_DIR)")
  key = (storage.absolute(corpus_dir), manifest.get("config_hash"), manifest.get("build_seconds"),
         float(temperature), shuffle_buffer_size)
  names = {"train": prefix, "heldout": heldout_mixture_name(prefix)}
  if _registered.get(prefix) == key:
    return {k: v for k, v in names.items() if v in seqio.MixtureRegistry.names()}
  _remove(prefix)
  vocabulary = vocabularies.vocabulary_for_corpus(corpus_dir)
  sizes, heldout = {}, []
  for lang, entry in sorted(manifest["languages"].items()):
    patterns = {}
    for split, stats in entry["splits"].items():
      pattern = os.path.join(corpus_dir, translation.shard_pattern(lang, split))
      if stats["items"] and tf.io.gfile.glob(pattern):
        patterns[split] = pattern
      elif stats["items"]:
        logging.warning("translation manifest lists %s/%s but no shard matches %s; skipped", lang, split, pattern)
    if not patterns:
      continue
    name = task_name(lang, prefix)
    counts = {s: int(entry["splits"][s]["items"]) for s in patterns}
    seqio.TaskRegistry.add(
        name,
        source=seqio.TFExampleDataSource(
            split_to_filepattern=patterns, feature_description=translation.feature_description(),
            reader_cls=tf.data.TFRecordDataset, num_input_examples=counts, cycle_length=1, block_length=1),
        preprocessors=[functools.partial(prepare, vocabulary=vocabulary, lang_id=int(entry["lang_id"]),
                                         counter_prefix=name)],
        output_features=output_features(vocabulary),
        shuffle_buffer_size=max(1, min(shuffle_buffer_size, max(counts.values()))))
    if entry.get("held_out"):
      heldout.append(name)
    elif "train" in patterns:
      sizes[name] = counts["train"]
  out = {}
  if sizes:
    seqio.MixtureRegistry.add(names["train"], sorted(builtin.temperature_rates(sizes, temperature).items()),
                              mixture_cls=builtin.LeanMixture)
    out["train"] = names["train"]
  if heldout:
    seqio.MixtureRegistry.add(names["heldout"], heldout, default_rate=1.0, mixture_cls=builtin.LeanMixture)
    out["heldout"] = names["heldout"]
  _registered[prefix] = key
  return out


def _pad(x: tf.Tensor, length: int):
  x = x[:length]
  n = tf.shape(x)[0]
  return (tf.ensure_shape(tf.pad(x, [[0, length - n]]), [length]),
          tf.ensure_shape(tf.cast(tf.range(length) < n, tf.int32), [length]))


def _stream_dataset(mixture: str, split: str, stream: str, batch_size: int, source_length: int,
                    target_length: int, seed: Optional[int], shuffle: bool, num_epochs: Optional[int]):
  ds = seqio.get_mixture_or_task(mixture).get_dataset(
      sequence_length=None, split=split, shuffle=shuffle, seed=seed, num_epochs=num_epochs,
      trim_output_features=False)
  source = "audio" if stream == "speech" else "tokens"

  @tf.autograph.experimental.do_not_convert
  def convert(ex):
    values, mask = _pad(ex[source], source_length)
    targets, targets_mask = _pad(ex["targets"], target_length)
    return {source: values, f"{source}_mask": mask, "targets": targets, "targets_mask": targets_mask,
            "lang": ex["lang"]}
  return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size, drop_remainder=True)


@gin.configurable
def translation_batches(mixture: str = PREFIX, split: str = "train", speech_batch: int = 8,
                        audio_samples: int = 64000, text_batch: int = 0, text_length: int = 64,
                        target_length: int = 64, seed: Optional[int] = 0, shuffle: bool = True,
                        num_epochs: Optional[int] = None) -> Iterator[dict]:
  """Numpy batches for TranslationModel from a registered Mixture (or Task): the speech stream and,
  when text_batch > 0, text-to-text batches of other items (joint speech + text fine-tuning)."""
  if speech_batch <= 0 and text_batch <= 0:
    raise ValueError("translation_batches: speech_batch and text_batch are both 0")
  streams = {}
  if speech_batch > 0:
    streams["speech"] = _stream_dataset(mixture, split, "speech", speech_batch, audio_samples, target_length,
                                        seed, shuffle, num_epochs)
  if text_batch > 0:
    streams["text"] = _stream_dataset(mixture, split, "text", text_batch, text_length, target_length,
                                      None if seed is None else seed + 1, shuffle, num_epochs)
  ds = tf.data.Dataset.zip(streams).prefetch(2)
  for batch in ds.as_numpy_iterator():
    yield {s: {k: np.asarray(v) for k, v in d.items()} for s, d in batch.items()}
