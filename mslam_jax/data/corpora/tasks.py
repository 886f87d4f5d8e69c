"""SeqIO Tasks and per-stream Mixtures over several prepared corpora (`mslam data prepare`).

`register_prepared_corpora({name: dir, ...}, streams={stream: [names]})` checks every manifest
against the pinned inventory (a disagreeing one stops the run at start), registers one Task per
corpus, stream and language, `{prefix}_{corpus}_{stream}_{lang}`, and one Mixture per stream,
`{prefix}_{stream}`. A language's rate is p_l ∝ n_l^(1/T) with n_l its training hours (speech,
paired) or characters (text) summed over the stream's corpora; within a language the corpora share
p_l by size. All corpora share one character vocabulary, built from the manifests' character
counts (the same for the same corpora, in any order); `prepared_vocab_size` gives the model its
size. Batches' `lang` is the inventory id (stable across package versions).
"""
import functools
import json
import logging
import math
import os
from typing import Any, Dict, Mapping, Optional, Sequence

import gin
import seqio
import tensorflow as tf

from mslam_jax.data import feature_converters
from mslam_jax.data import inventory
from mslam_jax.data import preprocessors
from mslam_jax.data import records
from mslam_jax.data import vocabularies

PREFIX = "prepared"
DEFAULT_RATE_UNITS = {"speech": "hours", "text": "characters", "paired": "hours"}
DEFAULT_SHUFFLE_BUFFER_SIZES = {"speech": 64, "text": 1000, "paired": 64}
_registered: Dict[str, tuple] = {}


def load_manifest(corpus_dir: str) -> dict:
  """A prepared corpus's manifest (any tf.io.gfile path: local, gs://, ...), checked against the
  inventory."""
  path = os.path.join(corpus_dir, "manifest.json")
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} not found: prepare the corpus first (mslam data prepare --out {corpus_dir})")
  with tf.io.gfile.GFile(path) as f:
    manifest = json.load(f)
  inventory.check_manifest(manifest, corpus_dir)
  return manifest


def _key(corpus_dirs: Mapping[str, str]) -> tuple:
  return tuple(sorted((name, str(d)) for name, d in corpus_dirs.items()))


@functools.lru_cache(maxsize=8)
def _shared_vocabulary(key: tuple):
  from mslam_jax.data.corpora import prepare  # pylint: disable=g-import-not-at-top
  counts: Dict[str, int] = {}
  for _, corpus_dir in key:
    for char, n in load_manifest(corpus_dir).get("character_counts", {}).items():
      counts[char] = counts.get(char, 0) + n
  return prepare.vocabulary_from_counts(counts)


def shared_vocabulary(corpus_dirs: Mapping[str, str]):
  return _shared_vocabulary(_key(corpus_dirs))


@gin.configurable
def prepared_vocab_size(corpus_dirs: Optional[Mapping[str, str]] = None, max_size: int = 4096,
                        multiple: int = 128) -> int:
  """The model's vocabulary size over the prepared corpora: the shared vocabulary rounded up to
  `multiple`, at most `max_size` (`max_size` when no corpus is given; ValueError when the
  vocabulary itself is larger)."""
  if not isinstance(corpus_dirs, Mapping) or not corpus_dirs:
    return max_size
  return vocabularies.model_vocab_size(shared_vocabulary(corpus_dirs).vocab_size, max_size, multiple,
                                       "the prepared corpora's shared vocabulary", "prepared_vocab_size.max_size",
                                       " (raise VOCAB_SIZE)")


def _count(stats: dict, unit: str) -> float:
  if unit not in ("hours", "characters", "clips"):
    raise ValueError(f"rate unit {unit!r} is not hours, characters or clips (register_prepared_corpora.rate_units)")
  return float(stats.get(unit, 0))


def split_patterns(corpus_dir: str, stream: str, lang: str, stats: Mapping[str, Any]) -> Dict[str, str]:
  """{split: shard glob} of one language and stream of a prepared corpus, for the splits that have
  clips (`stats`: the manifest's per-split counts of that language and stream)."""
  return {split: os.path.join(corpus_dir, records.shard_pattern(stream, lang, split))
          for split in records.SPLITS if stats.get(split, {}).get("clips")}


def language_source(corpus_dir: str, stream: str, lang: str, stats: Mapping[str, Any],
                    feature_description: Mapping[str, Any]) -> Optional[seqio.TFExampleDataSource]:
  """The records of one language and stream of a prepared corpus as a SeqIO source (the splits
  with clips, their clip counts); None when it has none."""
  patterns = split_patterns(corpus_dir, stream, lang, stats)
  if not patterns:
    return None
  return seqio.TFExampleDataSource(
      split_to_filepattern=patterns, feature_description=feature_description, reader_cls=tf.data.TFRecordDataset,
      num_input_examples={s: int(stats[s]["clips"]) for s in patterns}, cycle_length=1, block_length=1)


def source_sizes(source: seqio.DataSource) -> Dict[str, int]:
  """{split: clips} of a `language_source`."""
  return {split: source.num_input_examples(split) for split in source.splits}


@gin.configurable
def register_prepared_corpora(corpus_dirs: Mapping[str, str] = gin.REQUIRED,
                              streams: Optional[Mapping[str, Sequence[str]]] = None,
                              temperature: float | Mapping[str, float] = 3.0,
                              rate_units: Optional[Mapping[str, str]] = None,
                              shuffle_buffer_sizes: Optional[Mapping[str, int]] = None,
                              prefix: str = PREFIX,
                              phones: bool = False) -> Dict[str, str]:
  """Registers the Tasks and Mixtures (idempotent); returns {stream: mixture name}.

  Args:
    corpus_dirs: {corpus name: prepared directory}.
    streams: {stream: corpus names feeding it}; default: every corpus feeds every stream it has.
    temperature: T of p_l ∝ n_l^(1/T), one for all streams or per stream.
    rate_units: per stream, "hours", "characters" or "clips" (default hours / characters / hours).
    phones: the text and paired Tasks' items carry the phones their corpus stores (preprocessors.prepare_records), for
      phone-level text injection (gin_configs/experiments/phone_injection.gin).
  """
  if not isinstance(corpus_dirs, Mapping) or not corpus_dirs:
    raise ValueError("register_prepared_corpora.corpus_dirs is not set: bind PREPARED_CORPORA to "
                     "{'name': 'dir', ...} of `mslam data prepare --out` directories")
  units = {**DEFAULT_RATE_UNITS, **(rate_units or {})}
  buffers = {**DEFAULT_SHUFFLE_BUFFER_SIZES, **(shuffle_buffer_sizes or {})}
  temps = dict(temperature) if isinstance(temperature, Mapping) else {s: float(temperature) for s in records.STREAMS}
  streams = {s: list(v) for s, v in (streams or {s: list(corpus_dirs) for s in records.STREAMS}).items()}
  unknown = sorted({c for v in streams.values() for c in v} - set(corpus_dirs))
  if unknown:
    raise ValueError(f"register_prepared_corpora.streams names corpora {unknown} missing from corpus_dirs")
  key = (_key(corpus_dirs), json.dumps(streams, sort_keys=True), json.dumps(temps, sort_keys=True),
         json.dumps(units, sort_keys=True), json.dumps(buffers, sort_keys=True), bool(phones))
  manifests = {name: load_manifest(d) for name, d in corpus_dirs.items()}
  mixtures = {s: f"{prefix}_{s}" for s in streams}
  if _registered.get(prefix) == key:
    return {s: m for s, m in mixtures.items() if m in seqio.MixtureRegistry.names()}
  from mslam_jax.tasks import builtin  # pylint: disable=g-import-not-at-top  (registry clean-up, its lean Mixture)
  builtin.remove_registered(prefix)
  vocabulary = shared_vocabulary(corpus_dirs)
  registered = {}
  for stream, names in streams.items():
    sizes: Dict[str, Dict[str, float]] = {}  # lang -> {task: n}
    for corpus in names:
      corpus_dir = str(corpus_dirs[corpus])
      for lang, entry in sorted(manifests[corpus].get("languages", {}).items()):
        stats = entry.get("streams", {}).get(stream, {})
        source = language_source(corpus_dir, stream, lang, stats, preprocessors.training_feature_description(stream, phones))
        if source is None:
          continue
        task = f"{prefix}_{corpus}_{stream}_{lang}"
        seqio.TaskRegistry.add(
            task, source=source,
            preprocessors=preprocessors.record_preprocessors(stream, vocabulary, inventory.get(lang).id, task,
                                                             phones=phones),
            output_features=feature_converters.task_output_features(stream, vocabulary, phones=phones),
            shuffle_buffer_size=max(1, min(buffers[stream], max(source_sizes(source).values()))))
        if "train" in source.splits:
          sizes.setdefault(lang, {})[task] = _count(stats["train"], units[stream])
    t = temps.get(stream, 3.0)
    if t <= 0:
      raise ValueError(f"register_prepared_corpora.temperature must be > 0 for {stream}, got {t}")
    totals = {lang: sum(v.values()) for lang, v in sizes.items() if sum(v.values()) > 0}
    weights = {lang: math.pow(n, 1.0 / t) for lang, n in totals.items()}
    norm = sum(weights.values())
    rates = {task: weights[lang] / norm * n / totals[lang]
             for lang, by_task in sizes.items() if lang in totals for task, n in by_task.items() if n > 0}
    if rates:
      seqio.MixtureRegistry.add(mixtures[stream], sorted(rates.items()), mixture_cls=builtin.LeanMixture)
      registered[stream] = mixtures[stream]
      logging.info("Mixture %s: %d languages over %s, T=%g, rates by %s", mixtures[stream], len(totals), names, t,
                   units[stream])
  _registered[prefix] = key
  return registered
