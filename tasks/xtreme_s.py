"""SeqIO Tasks of the XTREME-S benchmark over prepared corpora (`mslam data prepare`).

`register_xtreme_s({"fleurs": DIR, "covost2": DIR, ...})` registers, for each benchmark task of
BENCHMARK whose corpus is given, one Task per language over that corpus' paired shards,
`xtreme_s_{task}_{lang}`, and the Mixture `xtreme_s_{task}` of its languages (rates by training
clips). Every example is

  {audio f32[n], targets i32[k] (the transcript or the translation, EOS-terminated; empty for a
   classification task), text str[] (the same target as written, the reference a score compares
   with; empty for a classification task), label str[] (the class of a classification task: the
   language or the intent; empty otherwise), lang i32[] (the inventory id)}

The labels come from what `mslam data prepare` writes beside each record (`label/<name>`
features: CoVoST 2's translation, MINDS-14's intent). Items without audio, or without the target
their task needs, are dropped and counted (`empty_{what}/{task}`).
"""
import dataclasses
import functools
import logging
from typing import Dict, Mapping

import seqio
import tensorflow as tf

from mslam_jax.data import feature_converters
from mslam_jax.data import inventory
from mslam_jax.data import preprocessors
from mslam_jax.data import records
from mslam_jax.data import vocabularies
from mslam_jax.data.corpora import tasks as corpora_tasks
from mslam_jax.tasks import builtin

PREFIX = "xtreme_s"
STREAM = "paired"  # every XTREME-S task is labelled speech
LABEL_KEYS = ("translation", "intent")  # the corpora's labels a task may need (data/corpora/base.py)


@dataclasses.dataclass(frozen=True)
class Spec:
  corpus: str
  target: str  # "text" (the transcript), "label/<name>" or "lang"
  metric: str

  @property
  def classification(self) -> bool:
    return self.target == "lang" or self.target == "label/intent"


BENCHMARK = {
    "fleurs_asr": Spec("fleurs", "text", "cer"),
    "fleurs_langid": Spec("fleurs", "lang", "accuracy"),
    "mls_asr": Spec("mls", "text", "wer"),
    "voxpopuli_asr": Spec("voxpopuli", "text", "wer"),
    "babel_asr": Spec("babel", "text", "wer"),
    "covost2_ast": Spec("covost2", "label/translation", "bleu"),
    "minds14_intent": Spec("minds14", "label/intent", "accuracy"),
}
_registered: Dict[str, tuple] = {}


def feature_description():
  """The records' parse spec plus the labels (empty when a record has none)."""
  description = dict(records.feature_description())
  for key in LABEL_KEYS:
    description[f"label/{key}"] = tf.io.FixedLenFeature([], tf.string, default_value="")
  return description


def output_features(vocabulary: seqio.Vocabulary) -> Dict[str, seqio.Feature]:
  return {
      "audio": seqio.Feature(feature_converters.AUDIO_VOCABULARY, add_eos=False, dtype=tf.float32, rank=1),
      "targets": seqio.Feature(vocabulary, add_eos=True, dtype=tf.int32, rank=1, required=False),
      "label": seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.string, rank=0,
                             required=False),
      "text": seqio.Feature(seqio.PassThroughVocabulary(size=0), add_eos=False, dtype=tf.string, rank=0,
                            required=False),
      "lang": seqio.Feature(feature_converters.LANG_VOCABULARY, add_eos=False, dtype=tf.int32, rank=0),
  }


def prepare(dataset: tf.data.Dataset, spec: Spec, vocabulary: seqio.Vocabulary, lang_id: int, task: str
            ) -> tf.data.Dataset:
  """Parsed records -> {audio, targets, label, lang}, dropping (and counting) the unusable ones."""

  @tf.autograph.experimental.do_not_convert
  def convert(ex):
    target = ex["text"] if spec.target == "text" else ex.get(spec.target, tf.constant(""))
    if spec.classification:
      label, text = ex["lang"] if spec.target == "lang" else target, tf.constant("")
      targets = tf.zeros([0], tf.int32)
    else:
      label, text = tf.constant(""), target
      targets = tf.concat([tf.cast(vocabulary.encode_tf(target), tf.int32), [vocabularies.EOS_ID]], axis=0)
    return {"audio": preprocessors.decode_audio(ex["audio_pcm16"]), "targets": targets, "text": text,
            "label": label, "lang": tf.constant(lang_id, tf.int32)}

  @tf.autograph.experimental.do_not_convert
  def keep(ex):
    no_audio = preprocessors.count_if(tf.size(ex["audio"]) < 1, f"empty_audio/{task}")
    if spec.classification:
      no_target = preprocessors.count_if(tf.equal(tf.strings.length(ex["label"]), 0), f"empty_label/{task}")
    else:
      no_target = preprocessors.count_if(tf.size(ex["targets"]) < 2, f"empty_targets/{task}")
    return tf.logical_not(tf.logical_or(no_audio, no_target))

  return dataset.map(convert).filter(keep)


def register_xtreme_s(corpus_dirs: Mapping[str, str], prefix: str = PREFIX,
                      shuffle_buffer_size: int = 256) -> Dict[str, list]:
  """Registers the Tasks and Mixtures of every benchmark task whose corpus is in `corpus_dirs`
  (idempotent); returns {mixture name: its languages}."""
  unknown = sorted(set(corpus_dirs) - {s.corpus for s in BENCHMARK.values()})
  if unknown:
    raise ValueError(f"register_xtreme_s: no XTREME-S task uses corpora {unknown}; "
                     f"known: {sorted({s.corpus for s in BENCHMARK.values()})}")
  key = (corpora_tasks._key(corpus_dirs), shuffle_buffer_size)  # pylint: disable=protected-access
  if _registered.get(prefix) == key:
    return _registered[prefix + "/out"]
  builtin.remove_registered(prefix)
  vocabulary = corpora_tasks.shared_vocabulary(corpus_dirs)
  out = {}
  for task_name, spec in sorted(BENCHMARK.items()):
    if spec.corpus not in corpus_dirs:
      continue
    corpus_dir = str(corpus_dirs[spec.corpus])
    manifest = corpora_tasks.load_manifest(corpus_dir)
    sizes = {}
    for lang, entry in sorted(manifest.get("languages", {}).items()):
      stats = entry.get("streams", {}).get(STREAM, {})
      source = corpora_tasks.language_source(corpus_dir, STREAM, lang, stats, feature_description())
      if source is None:
        continue
      name = f"{prefix}_{task_name}_{lang}"
      counts = corpora_tasks.source_sizes(source)
      seqio.TaskRegistry.add(
          name, source=source,
          preprocessors=[functools.partial(prepare, spec=spec, vocabulary=vocabulary,
                                           lang_id=inventory.get(lang).id, task=name)],
          output_features=output_features(vocabulary),
          shuffle_buffer_size=max(1, min(shuffle_buffer_size, max(counts.values()))))
      sizes[name] = max(counts.get("train", 0), 1)
    if sizes:
      mixture = f"{prefix}_{task_name}"
      seqio.MixtureRegistry.add(mixture, sorted(sizes.items()))
      out[mixture] = sorted(n[len(f"{prefix}_{task_name}_"):] for n in sizes)
      logging.info("XTREME-S %s: %d languages of %s (%s)", task_name, len(sizes), spec.corpus, spec.metric)
  _registered[prefix] = key
  _registered[prefix + "/out"] = out
  return out
