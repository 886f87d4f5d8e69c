"""Fine-tuning data of an XTREME-S benchmark task (tasks/xtreme_s.py) over prepared corpora: training
batches streamed from the task's SeqIO Mixture, and its scoring split read for the metric.

The benchmark task picks the head (HEADS): its target "text" the CTC head, "lang" or
"label/intent" the classification head (classes: the sorted labels of the train split), and
"label/translation" the translation model (models/translation.py). Each head's batches have the
format its loss_fn consumes, built by a feature converter on the Mixture's examples:

  ctc        {"paired": {audio, audio_mask, tokens, tokens_mask, lang}}   (tokens: the transcript's
             characters without EOS; an item longer than the audio or target length is dropped)
  classify   {"speech": {audio, audio_mask, lang}}  ("lang": the class index; a longer clip is cropped)
  translate  {"speech": {audio, audio_mask, targets, targets_mask, lang}}  (targets end with EOS;
             an item longer than the lengths is dropped)

Batches come from data/pipeline.StepIterator with these converters: streamed (nothing is held in
memory beyond tf.data's buffers), sharded by process, with its exact resume (the tf.data iterator's
checkpoint in the Trainer's checkpoints). Dropped and cropped items are counted by name in the
step iterator's counters.
"""
import dataclasses
import functools
import hashlib
import logging
import os
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

import gin
import numpy as np
import seqio
import tensorflow as tf

from mslam_jax.data import feature_converters
from mslam_jax.data import pipeline
from mslam_jax.data import preprocessors
from mslam_jax.data import vocabularies
from mslam_jax.data.corpora import tasks as corpora_tasks
from mslam_jax.tasks import xtreme_s

HEADS = {"text": "ctc", "lang": "classify", "label/intent": "classify", "label/translation": "translate"}
STREAMS = {"ctc": "paired", "classify": "speech", "translate": "speech"}  # the batch key of each head
FeatureSpec = seqio.FeatureConverter.FeatureSpec


@gin.configurable
@dataclasses.dataclass(frozen=True)
class XtremeSData:
  """How an XTREME-S task's batches are streamed (gin: XtremeSData.target_length = 256, ...).

  target_length: tokens per target (characters, + EOS for translation): every batch's shape; a
    longer item is dropped and counted (FLEURS transcripts stay under ~400 characters).
  shuffle_buffer_size: per-language shuffle buffer of decoded clips. The tf.data checkpoint in
    each fine-tuning checkpoint holds these buffers: about languages x size x clip seconds x
    64 kB (102 FLEURS languages x 16 x 10 s: ~1 GB); lower it, or set checkpoint_pipeline=False
    and resume by re-reading the consumed batches instead.
  checkpoint_pipeline, num_threads, prefetch: data/pipeline.make_step_iterator's.
  """
  target_length: int = 256
  shuffle_buffer_size: int = 16
  checkpoint_pipeline: bool = True
  num_threads: int = 0
  prefetch: int = 2

  def __post_init__(self):
    if self.target_length < 2 or self.shuffle_buffer_size < 1:
      raise ValueError("XtremeSData.target_length must be >= 2 and shuffle_buffer_size >= 1")


def task_name(benchmark: str) -> str:
  """"fleurs_asr" (also "xtreme_s_fleurs_asr") -> "fleurs_asr"."""
  prefix = f"{xtreme_s.PREFIX}_"
  return benchmark[len(prefix):] if benchmark.startswith(prefix) else benchmark


def benchmark_spec(benchmark: str, corpora: Optional[Mapping[str, str]]) -> xtreme_s.Spec:
  """The benchmark task's Spec; ValueError naming what to pass when it is unknown or its corpus is
  not among `corpora`."""
  name = task_name(benchmark)
  if name not in xtreme_s.BENCHMARK:
    raise ValueError(f"finetune_run.xtreme_s={benchmark!r} is not an XTREME-S task; pass --xtreme_s one of "
                     f"{sorted(xtreme_s.BENCHMARK)}")
  spec = xtreme_s.BENCHMARK[name]
  if not corpora or spec.corpus not in corpora:
    raise ValueError(f"XTREME-S {name} reads the prepared {spec.corpus} corpus: pass --corpora {spec.corpus}=DIR "
                     f"(finetune_run.corpora; prepare it with `mslam data prepare --corpus {spec.corpus}`), "
                     f"got corpora {sorted(corpora or {})}")
  return spec


def head(spec: xtreme_s.Spec) -> str:
  return HEADS[spec.target]


def mixture_name(benchmark: str) -> str:
  return f"{xtreme_s.PREFIX}_{task_name(benchmark)}"


def register(benchmark: str, corpora: Mapping[str, str], data: XtremeSData) -> list[str]:
  """Registers the XTREME-S Tasks of `corpora` (only the benchmark's corpus, so the vocabulary is
  that corpus'); returns the benchmark's languages."""
  spec = benchmark_spec(benchmark, corpora)
  mixtures = xtreme_s.register_xtreme_s(_own_corpus(spec, corpora), shuffle_buffer_size=data.shuffle_buffer_size)
  name = mixture_name(benchmark)
  if name not in mixtures:
    raise ValueError(f"the {spec.corpus} corpus in {corpora[spec.corpus]} has no paired clips for XTREME-S "
                     f"{task_name(benchmark)}")
  return mixtures[name]


def _own_corpus(spec: xtreme_s.Spec, corpora: Mapping[str, str]) -> dict[str, str]:
  return {spec.corpus: str(corpora[spec.corpus])}


def vocabulary(benchmark: str, corpora: Mapping[str, str]) -> seqio.Vocabulary:
  """The character vocabulary the benchmark's targets are encoded with (its corpus')."""
  return corpora_tasks.shared_vocabulary(_own_corpus(benchmark_spec(benchmark, corpora), corpora))


def _tasks(benchmark: str, split: str) -> list[tuple[str, seqio.Task]]:
  """(language, Task) of the registered benchmark that have `split`."""
  prefix = f"{mixture_name(benchmark)}_"
  return [(t.name[len(prefix):], t) for t in seqio.get_mixture_or_task(mixture_name(benchmark)).tasks
          if split in t.splits]


def train_labels(benchmark: str, feature: str, max_per_lang: Optional[int] = None) -> list[str]:
  """The `feature` ("label/intent", "label/translation") of the train records, read from the
  records alone (no audio decoded), the first `max_per_lang` of each language."""
  parse = {feature: tf.io.FixedLenFeature([], tf.string, default_value="")}
  out = []
  for _, task in _tasks(benchmark, "train"):
    ds = tf.data.TFRecordDataset(task.source.list_shards("train"))
    if max_per_lang is not None:
      ds = ds.take(max_per_lang)
    out += [v.decode("utf-8") for v in ds.map(lambda r: tf.io.parse_single_example(r, parse)[feature]).as_numpy_iterator()]
  return out


def classes(benchmark: str, corpora: Mapping[str, str]) -> list[str]:
  """The sorted labels of the train split: the languages with train clips (language ID), or the
  intents the train records carry."""
  spec = benchmark_spec(benchmark, corpora)
  if spec.target == "lang":
    found = {lang for lang, _ in _tasks(benchmark, "train")}
  else:
    found = set(train_labels(benchmark, spec.target)) - {""}
  if len(found) < 2:
    raise ValueError(f"XTREME-S {task_name(benchmark)} needs at least two classes in the train split of "
                     f"{corpora[spec.corpus]}, found {sorted(found)}")
  return sorted(found)


# -- feature converters: the Mixture's {audio, targets, label, lang} -> a head's batch ----------------

_AUDIO = FeatureSpec(tf.float32)
_LANG = FeatureSpec(tf.int32, rank=0)


class _Described:
  """What enters the step iterator's fingerprint: the head's conversion and the corpora read (by
  their manifests' content, so a resume on a re-prepared corpus is caught)."""
  KIND = ""

  def __init__(self, corpora: Optional[Mapping[str, str]] = None, **kwargs):
    super().__init__(**kwargs)
    self.corpora = dict(corpora or {})

  def describe(self) -> dict:
    return {"converter": self.KIND, "over_length": self.over_length, "corpora": self.corpora}


class CTCConverter(_Described, feature_converters.PairedFeatureConverter):
  """{audio, targets, lang} -> the paired stream; the targets' reserved ids (EOS) are left out."""
  KIND = "ctc"
  TASK_FEATURES = {"audio": _AUDIO, "targets": FeatureSpec(tf.int32), "lang": _LANG}

  @staticmethod
  def _lengths(lengths):
    return {"audio": lengths["audio"], "tokens": lengths["targets"], "lang": 0}

  def _convert_features(self, ds, task_feature_lengths):
    @tf.autograph.experimental.do_not_convert
    def characters(ex):
      targets = ex["targets"]
      return {"audio": ex["audio"], "tokens": tf.boolean_mask(targets, targets >= vocabularies.NUM_RESERVED),
              "lang": ex["lang"]}
    return super()._convert_features(ds.map(characters), self._lengths(task_feature_lengths))

  def get_model_feature_lengths(self, task_feature_lengths):
    return super().get_model_feature_lengths(self._lengths(task_feature_lengths))


class TranslationConverter(_Described, feature_converters.PairedFeatureConverter):
  """{audio, targets, lang} -> TranslationModel's speech stream (targets end with EOS)."""
  KIND = "translate"
  TASK_FEATURES = {"audio": _AUDIO, "targets": FeatureSpec(tf.int32), "lang": _LANG}
  MODEL_FEATURES = {"audio": _AUDIO, "audio_mask": FeatureSpec(tf.int32), "targets": FeatureSpec(tf.int32),
                    "targets_mask": FeatureSpec(tf.int32), "lang": _LANG}

  def _convert_features(self, ds, task_feature_lengths):
    @tf.autograph.experimental.do_not_convert
    def as_tokens(ex):
      return {"audio": ex["audio"], "tokens": ex["targets"], "lang": ex["lang"]}

    @tf.autograph.experimental.do_not_convert
    def as_targets(ex):
      return {"audio": ex["audio"], "audio_mask": ex["audio_mask"], "targets": ex["tokens"],
              "targets_mask": ex["tokens_mask"], "lang": ex["lang"]}
    lengths = {"audio": task_feature_lengths["audio"], "tokens": task_feature_lengths["targets"], "lang": 0}
    return super()._convert_features(ds.map(as_tokens), lengths).map(as_targets)

  def get_model_feature_lengths(self, task_feature_lengths):
    n, s = task_feature_lengths["targets"], task_feature_lengths["audio"]
    return {"audio": s, "audio_mask": s, "targets": n, "targets_mask": n, "lang": 0}


class ClassConverter(_Described, feature_converters.SpeechFeatureConverter):
  """{audio, label, lang} -> the speech stream with the label's index among `classes` as "lang"
  (a label outside them is dropped and counted)."""
  KIND = "classify"
  TASK_FEATURES = {"audio": _AUDIO, "label": FeatureSpec(tf.string, rank=0), "lang": _LANG}

  def __init__(self, classes: Sequence[str] = (), **kwargs):
    super().__init__(**kwargs)
    self.classes = list(classes)

  def describe(self) -> dict:
    return {**super().describe(), "classes": self.classes}

  def _convert_features(self, ds, task_feature_lengths):
    classes = tf.constant(self.classes)
    name = self.counter_name("unknown_label")

    @tf.autograph.experimental.do_not_convert
    def known(ex):
      unknown = tf.logical_not(tf.reduce_any(tf.equal(classes, ex["label"])))
      return tf.logical_not(preprocessors.count_if(unknown, name))

    @tf.autograph.experimental.do_not_convert
    def index(ex):
      return {"audio": ex["audio"],
              "lang": tf.argmax(tf.cast(tf.equal(classes, ex["label"]), tf.int32), output_type=tf.int32)}
    return super()._convert_features(ds.filter(known).map(index), task_feature_lengths)


def _corpora_fingerprint(corpora: Mapping[str, str]) -> dict:
  out = {}
  for name, directory in sorted(corpora.items()):
    with tf.io.gfile.GFile(os.path.join(directory, "manifest.json"), "rb") as f:
      out[name] = hashlib.sha256(f.read()).hexdigest()[:16]
  return out


def stream_config(benchmark: str, corpora: Mapping[str, str], batch_size: int, audio_samples: int,
                  target_length: int, classes: Optional[Sequence[str]] = None) -> tuple[str, pipeline.StreamConfig]:
  """(batch key, StreamConfig) of the benchmark's head."""
  spec = benchmark_spec(benchmark, corpora)
  kind = head(spec)
  fingerprint = _corpora_fingerprint(_own_corpus(spec, corpora))
  if kind == "classify":
    if not classes:
      raise ValueError(f"XTREME-S {task_name(benchmark)} classifies: give its classes")
    converter = functools.partial(ClassConverter, classes=list(classes), corpora=fingerprint)
    lengths, over_length = {"audio": audio_samples, "label": 0}, "crop"
  else:
    converter = functools.partial(CTCConverter if kind == "ctc" else TranslationConverter, corpora=fingerprint)
    lengths, over_length = {"audio": audio_samples, "targets": target_length}, "drop"
  return STREAMS[kind], pipeline.StreamConfig(mixture_name(benchmark), batch_size, lengths, over_length,
                                              converter=converter)


def step_iterator(benchmark: str, corpora: Mapping[str, str], batch_size: int, audio_samples: int,
                  seed: int = 0, classes: Optional[Sequence[str]] = None, data: Optional[XtremeSData] = None,
                  split: str = "train", shard_info: Optional[seqio.ShardInfo] = None) -> pipeline.StepIterator:
  """The fine-tuning batches of `benchmark` (the Trainer's iterator: get_state/set_state/element_spec;
  each process reads its shard of every language, `shard_info`)."""
  data = data or XtremeSData()
  key, config = stream_config(benchmark, corpora, batch_size, audio_samples, data.target_length, classes)
  return pipeline.StepIterator(
      {key: config}, split=split, seed=seed, shard_info=shard_info, prefetch=data.prefetch,
      setup=lambda: register(benchmark, corpora, data), num_threads=data.num_threads,
      checkpoint_pipeline=data.checkpoint_pipeline, log_every=100)


# -- the scoring split ----------------------------------------------------------------------------

@dataclasses.dataclass
class Example:
  """One scoring example: the clip, its language and its reference (transcript, translation or class)."""
  audio: np.ndarray
  lang: str
  text: str
  label: str
  id: str = ""


def eval_split(benchmark: str) -> str:
  """"test", or "validation" when no language has a test split."""
  for split in ("test", "validation"):
    if _tasks(benchmark, split):
      return split
  raise ValueError(f"XTREME-S {task_name(benchmark)} has neither a test nor a validation split")


def iter_examples(benchmark: str, corpora: Mapping[str, str], split: str,
                  max_per_lang: Optional[int] = None) -> Iterator[Example]:
  """The split's examples, streamed language by language in file order (the first `max_per_lang`
  of each), with their references as written."""
  del corpora  # the registered Tasks read them
  count, langs = 0, set()
  for lang, task in _tasks(benchmark, split):
    ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, num_epochs=1,
                          trim_output_features=False)
    if max_per_lang is not None:
      ds = ds.take(max_per_lang)
    for i, ex in enumerate(ds.as_numpy_iterator()):
      count, _ = count + 1, langs.add(lang)
      yield Example(np.asarray(ex["audio"], np.float32), lang, ex["text"].decode("utf-8"),
                    ex["label"].decode("utf-8"), f"{lang}-{split}-{i}")
  logging.info("XTREME-S %s: %d %s examples of %d languages", task_name(benchmark), count, split, len(langs))


def chunks(items: Iterable[Any], size: int) -> Iterator[list]:
  """Lists of `size` consecutive items (the last may be shorter)."""
  chunk = []
  for item in items:
    chunk.append(item)
    if len(chunk) == size:
      yield chunk
      chunk = []
  if chunk:
    yield chunk
