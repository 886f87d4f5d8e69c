"""SeqIO Tasks and Mixtures of the built-in corpus (`mslam data build-builtin --out DIR`).

`register_builtin_corpus(DIR)` reads `DIR/manifest.json` and registers

  * one Task per language and stream: `builtin_speech_{lang}`, `builtin_text_{lang}`,
    `builtin_paired_{lang}` (the splits present on disk; output features of
    mslam_jax.data.feature_converters.task_output_features), and
  * one Mixture per stream: `builtin_speech`, `builtin_text`, `builtin_paired`, sampling language l
    with rate n_l^(1/T) (temperature sampling as in mSLAM/XLM-R; T=1 follows the data, T->inf is
    uniform), where n_l is the language's training hours (speech, paired) or examples (text).
    Held-out languages' paired data never enters `builtin_paired`; their Tasks stay registered
    (for zero-shot evaluation) and are collected in the Mixture `builtin_paired_heldout`.

Gin: `register_builtin_corpus.corpus_dir`, `.temperature`, `.rate_units`, `.shuffle_buffer_sizes`.
"""
import json
import logging
import math
import os
from typing import Dict, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from mslam_jax import storage
from mslam_jax.data import feature_converters
from mslam_jax.data import preprocessors
from mslam_jax.data import records
from mslam_jax.data import vocabularies

PREFIX = "builtin"
DEFAULT_RATE_UNITS = {"speech": "hours", "text": "examples", "paired": "hours"}
# Per-task shuffle buffers hold decoded items; audio ones are kept small since there is one per language.
DEFAULT_SHUFFLE_BUFFER_SIZES = {"speech": 64, "text": 1000, "paired": 64}

_registered: Dict[str, tuple] = {}  # prefix -> the arguments it was registered with


def task_name(stream: str, lang: str, prefix: str = PREFIX) -> str:
  return f"{prefix}_{stream}_{lang}"


def mixture_name(stream: str, prefix: str = PREFIX) -> str:
  return f"{prefix}_{stream}"


def heldout_mixture_name(prefix: str = PREFIX) -> str:
  return f"{prefix}_paired_heldout"


MANIFEST_NAME = "manifest.json"


def load_manifest(corpus_dir: str) -> dict:
  path = os.path.join(corpus_dir, MANIFEST_NAME)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} not found: build the corpus first (mslam data build-builtin --out "
                            f"{corpus_dir}) or fix the binding register_builtin_corpus.corpus_dir")
  with tf.io.gfile.GFile(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is not a readable manifest ({e}); rebuild the corpus") from None


def _split_stats(manifest: dict, lang: str, stream: str) -> Dict[str, dict]:
  """{split: {"clips": n, "hours": h, ...}} of one language and stream, {} when absent."""
  entry = manifest.get("languages", {}).get(lang, {})
  streams = entry.get("streams", entry)
  stats = streams.get(stream) or {}
  return {split: stats[split] for split in records.SPLITS if isinstance(stats.get(split), dict)}


def _count(stats: dict, unit: str) -> float:
  if unit == "hours":
    return float(stats.get("hours", 0.0))
  if unit == "examples":
    return float(stats.get("clips", stats.get("examples", 0)))
  if unit == "characters":
    return float(stats.get("characters", 0))
  raise ValueError(f"rate unit {unit!r} is not hours, examples or characters "
                   "(binding register_builtin_corpus.rate_units)")


def temperature_rates(sizes: Mapping[str, float], temperature: float) -> Dict[str, float]:
  """Sampling probabilities p_l ∝ n_l^(1/T) (languages with n_l = 0 get nothing)."""
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature} (binding register_builtin_corpus.temperature)")
  weights = {k: math.pow(n, 1.0 / temperature) for k, n in sizes.items() if n > 0}
  total = sum(weights.values())
  return {k: w / total for k, w in weights.items()}


class LeanMixture(seqio.Mixture):
  """A seqio.Mixture that adds no per-Task map of its own.

  seqio's Mixture maps every Task's dataset through a parallel feature filter; the built-in Tasks
  already emit exactly their output features, and with hundreds of Tasks those parallel maps
  (a worker thread each) cost most of the host's time.
  """

  def get_task_dataset(self, task, output_feature_keys, sequence_length=None, split="train",
                       use_cached=False, shuffle=True, seed=None, shard_info=None, num_epochs=None,
                       trim_output_features=True, try_in_mem_cache=True):
    ds = task.get_dataset(sequence_length=sequence_length, split=split, use_cached=use_cached,
                          shuffle=shuffle, seed=seed, shard_info=shard_info, num_epochs=num_epochs,
                          trim_output_features=trim_output_features, try_in_mem_cache=try_in_mem_cache)
    extra = set(ds.element_spec) - set(output_feature_keys)
    if extra:
      raise ValueError(f"Task {task.name} emits features {sorted(extra)} outside the mixture's "
                       f"{sorted(output_feature_keys)}")
    return ds


def remove_registered(prefix: str) -> None:
  """Removes the Mixtures and Tasks named `{prefix}_...` (before registering them again)."""
  for name in list(seqio.MixtureRegistry.names()):
    if name.startswith(prefix + "_"):
      seqio.MixtureRegistry.remove(name)
  for name in list(seqio.TaskRegistry.names()):
    if name.startswith(prefix + "_"):
      seqio.TaskRegistry.remove(name)


@gin.configurable
def register_builtin_corpus(corpus_dir: str = gin.REQUIRED,
                            temperature: float = 3.0,
                            rate_units: Optional[Mapping[str, str]] = None,
                            shuffle_buffer_sizes: Optional[Mapping[str, int]] = None,
                            prefix: str = PREFIX,
                            cycle_length: int = 1,
                            phones: bool = False) -> Dict[str, str]:
  """Registers the corpus' Tasks and Mixtures (idempotent); returns {stream: mixture name}.

  `phones`: the text and paired Tasks' items carry the phones their corpus stores (preprocessors.prepare_records), for
  phone-level text injection (gin_configs/experiments/phone_injection.gin)."""
  from mslam_jax.data import languages  # pylint: disable=g-import-not-at-top
  if not isinstance(corpus_dir, (str, os.PathLike)):
    raise ValueError("register_builtin_corpus.corpus_dir is not set: bind the gin macro CORPUS_DIR "
                     "(e.g. --gin.CORPUS_DIR=\"'/path/to/corpus'\") to a built-in corpus directory")
  corpus_dir = os.fspath(corpus_dir)
  rate_units = {**DEFAULT_RATE_UNITS, **(rate_units or {})}
  buffers = {**DEFAULT_SHUFFLE_BUFFER_SIZES, **(shuffle_buffer_sizes or {})}
  manifest = load_manifest(corpus_dir)
  from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  builtin_corpus.verify_corpus(corpus_dir, manifest)
  # A corpus rebuilt in place (another config hash) is registered afresh.
  key = (storage.absolute(corpus_dir), manifest.get("config_hash"), manifest.get("build_seconds"),
         float(temperature), tuple(sorted(rate_units.items())), tuple(sorted(buffers.items())),
         cycle_length, bool(phones))
  mixtures = {stream: mixture_name(stream, prefix) for stream in records.STREAMS}
  if _registered.get(prefix) == key:
    return {s: m for s, m in mixtures.items() if m in seqio.MixtureRegistry.names()}
  remove_registered(prefix)
  _registered.pop(prefix, None)

  vocabulary = vocabularies.vocabulary_for_corpus(corpus_dir)
  held_out = set(records.held_out_languages(manifest))
  registered = {}
  for stream in records.STREAMS:
    sizes = {}
    heldout_tasks = []
    for lang in sorted(manifest.get("languages", {})):
      stats = _split_stats(manifest, lang, stream)
      patterns = {}
      for split, split_stats in stats.items():
        if not split_stats.get("clips", split_stats.get("examples", 0)):
          continue
        pattern = os.path.join(corpus_dir, records.shard_pattern(stream, lang, split))
        if not tf.io.gfile.glob(pattern):
          raise FileNotFoundError(f"{MANIFEST_NAME} of {corpus_dir} lists {split_stats.get('clips', 0)} "
                                  f"{stream}/{lang}/{split} items but no shard matches {pattern}")
        patterns[split] = pattern
      if not patterns:
        continue
      try:
        lang_id = languages.lang_id(lang)
      except (KeyError, ValueError) as e:
        logging.warning("language %r of the corpus is not in the registry (%s); its %s data is skipped",
                        lang, e, stream)
        continue
      name = task_name(stream, lang, prefix)
      num_examples = {s: int(stats[s].get("clips", stats[s].get("examples", 0))) for s in patterns}
      seqio.TaskRegistry.add(
          name,
          source=seqio.TFExampleDataSource(
              split_to_filepattern=patterns,
              feature_description=preprocessors.training_feature_description(stream, phones),
              reader_cls=tf.data.TFRecordDataset,
              num_input_examples=num_examples,
              # One parallel interleave per Task: wide ones (seqio's default 16) start threads per
              # open file, which swamps the host when a Mixture holds hundreds of Tasks.
              cycle_length=cycle_length, block_length=1),
          preprocessors=preprocessors.record_preprocessors(stream, vocabulary, lang_id, name,
                                                           phones=phones),
          output_features=feature_converters.task_output_features(stream, vocabulary, phones=phones),
          # A buffer larger than the language's data only repeats it (and costs start-up time).
          shuffle_buffer_size=max(1, min(buffers[stream], max(num_examples.values()))))
      if stream == "paired" and lang in held_out:
        heldout_tasks.append(name)
      elif "train" in patterns:
        sizes[name] = _count(stats["train"], rate_units[stream])
    rates = temperature_rates(sizes, temperature) if sizes else {}
    if rates:
      seqio.MixtureRegistry.add(mixtures[stream], sorted(rates.items()), mixture_cls=LeanMixture)
      registered[stream] = mixtures[stream]
      logging.info("Mixture %s: %d languages, T=%g, rates by %s", mixtures[stream], len(rates),
                   temperature, rate_units[stream])
    if heldout_tasks:
      seqio.MixtureRegistry.add(heldout_mixture_name(prefix), heldout_tasks, default_rate=1.0,
                                mixture_cls=LeanMixture)
  _registered[prefix] = key
  return registered


def mixture_rates(name: str) -> Dict[int, float]:
  """{lang id: sampling probability} of a registered per-language Mixture (for tests and reports)."""
  from mslam_jax.data import languages  # pylint: disable=g-import-not-at-top
  mixture = seqio.get_mixture_or_task(name)
  total = sum(mixture.get_rate(t) for t in mixture.tasks)
  # Task names end with the language code: {prefix}_{stream}_{lang}.
  return {languages.lang_id(t.name.rsplit("_", 1)[1]): mixture.get_rate(t) / total for t in mixture.tasks}
