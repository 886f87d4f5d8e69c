"""Feature converters: variable-length Task examples -> fixed-shape model features, one per stream.

A Task of stream `speech` yields {audio f32[n], lang i32[]}, `text` yields {tokens i32[m], lang},
`paired` yields both. The converters pad each to a fixed length with a 1/0 mask (padding value 0)
so that every step has the same shapes (one XLA compilation). Over-long items follow a policy
chosen in gin, and each crop/truncation/drop is counted (mslam_jax.data.preprocessors counters):

  speech: "crop" (default) takes a random window of S samples (wav2vec 2.0 / w2v-BERT do the same),
          seeded per item so a rerun crops identically; "drop" skips the clip.
  text:   "truncate" (default) keeps the first L tokens; "drop" skips.
  paired: "drop" (default), because cropping audio would break its match with the transcript;
          "truncate" keeps the first Sp samples and Lp tokens (use only when alignment loss is moot).
"""
from typing import Mapping, Optional

import gin
import seqio
import tensorflow as tf

from mslam_jax.data import preprocessors

FeatureSpec = seqio.FeatureConverter.FeatureSpec
AUDIO_VOCABULARY = seqio.PassThroughVocabulary(size=0)
LANG_VOCABULARY = seqio.PassThroughVocabulary(size=0)
PHONE_VOCABULARY = seqio.PassThroughVocabulary(size=0)

SPEECH_POLICIES = ("crop", "drop")
TEXT_POLICIES = ("truncate", "drop")
PAIRED_POLICIES = ("drop", "truncate")


def task_output_features(stream: str, vocabulary: Optional[seqio.Vocabulary] = None, phones: bool = False
                         ) -> Mapping[str, seqio.Feature]:
  """The output features every Task of `stream` declares (same for every corpus); `phones`: the
  text's `phones` too (text and paired streams; mslam_jax.data.phones ids)."""
  audio = seqio.Feature(AUDIO_VOCABULARY, add_eos=False, dtype=tf.float32, rank=1)
  lang = seqio.Feature(LANG_VOCABULARY, add_eos=False, dtype=tf.int32, rank=0)
  if stream == "speech":
    return {"audio": audio, "lang": lang}
  if vocabulary is None:
    raise ValueError(f"stream {stream!r} needs a vocabulary")
  tokens = seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32, rank=1)
  extra = {"phones": seqio.Feature(PHONE_VOCABULARY, add_eos=False, dtype=tf.int32, rank=1)} if phones else {}
  if stream == "text":
    return {"tokens": tokens, **extra, "lang": lang}
  if stream == "paired":
    return {"audio": audio, "tokens": tokens, **extra, "lang": lang}
  raise ValueError(f"unknown stream {stream!r}")


def _pad(x: tf.Tensor, length: int) -> tuple[tf.Tensor, tf.Tensor]:
  """Pads (or cuts) a 1-D tensor to `length`; returns it and its int32 valid mask."""
  x = x[:length]
  n = tf.shape(x)[0]
  padded = tf.pad(x, [[0, length - n]])
  mask = tf.cast(tf.range(length) < n, tf.int32)
  return tf.ensure_shape(padded, [length]), tf.ensure_shape(mask, [length])


def _random_window(x: tf.Tensor, length: int, seed: tf.Tensor) -> tf.Tensor:
  n = tf.shape(x, out_type=tf.int64)[0]
  start = tf.random.stateless_uniform(
      [], seed=seed, minval=0, maxval=tf.maximum(n - length + 1, 1), dtype=tf.int64)
  return x[start:start + length]


class _StreamConverter(seqio.FeatureConverter):
  """Shared scaffolding: no packing; lengths are checked by the converter itself (it crops)."""

  POLICIES = ()
  DEFAULT_POLICY = ""
  TASK_FEATURES = {}
  MODEL_FEATURES = {}
  PACKING_FEATURE_DTYPES = {}

  def __init__(self, over_length: Optional[str] = None, seed: int = 0, name: str = ""):
    # seqio's input check asserts len <= length; over-long items are this converter's job.
    super().__init__(pack=False, apply_length_check=False)
    self.over_length = over_length or self.DEFAULT_POLICY
    if self.over_length not in self.POLICIES:
      raise ValueError(f"{type(self).__name__}: over_length={self.over_length!r} is not one of "
                       f"{self.POLICIES} (set it with the gin binding make_step_iterator.*_over_length)")
    self.seed = seed
    self.name = name or type(self).__name__

  def counter_name(self, what: str) -> str:
    return f"{what}/{self.name}"

  def _extra(self, ex, out, task_feature_lengths):
    """The converted item `out` plus what a subclass adds from the Task's item `ex`."""
    del ex, task_feature_lengths
    return out

  def _drop_over_length(self, ds: tf.data.Dataset, too_long_fn) -> tf.data.Dataset:
    """Under the "drop" policy, filters out (and counts) items for which `too_long_fn` holds."""
    if self.over_length != "drop":
      return ds
    name = self.counter_name("dropped_over_length")

    @tf.autograph.experimental.do_not_convert
    def keep(ex):
      return tf.logical_not(preprocessors.count_if(too_long_fn(ex), name))
    return ds.filter(keep)


@gin.register
class SpeechFeatureConverter(_StreamConverter):
  """{audio f32[n], lang} -> {audio f32[S], audio_mask i32[S], lang i32[]}."""

  POLICIES = SPEECH_POLICIES
  DEFAULT_POLICY = "crop"
  TASK_FEATURES = {"audio": FeatureSpec(tf.float32), "lang": FeatureSpec(tf.int32, rank=0)}
  MODEL_FEATURES = {"audio": FeatureSpec(tf.float32), "audio_mask": FeatureSpec(tf.int32),
                    "lang": FeatureSpec(tf.int32, rank=0)}

  def _convert_features(self, ds, task_feature_lengths):
    length = task_feature_lengths["audio"]
    ds = self._drop_over_length(ds, lambda ex: tf.shape(ex["audio"])[0] > length)

    @tf.autograph.experimental.do_not_convert
    def convert(index, ex):
      audio = ex["audio"]
      if self.over_length == "crop":
        too_long = preprocessors.count_if(tf.shape(audio)[0] > length, self.counter_name("cropped"))
        seed = tf.stack([tf.constant(self.seed, tf.int64), index])
        audio = tf.cond(too_long, lambda: _random_window(audio, length, seed), lambda: audio)
      audio, mask = _pad(audio, length)
      return {"audio": audio, "audio_mask": mask, "lang": ex["lang"]}
    # The item's position in the stream seeds its crop: deterministic on a rerun or a resume.
    return ds.enumerate().map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    s = task_feature_lengths["audio"]
    return {"audio": s, "audio_mask": s, "lang": 0}


@gin.register
class TextFeatureConverter(_StreamConverter):
  """{tokens i32[m], lang} -> {tokens i32[L], tokens_mask i32[L], lang i32[]}."""

  POLICIES = TEXT_POLICIES
  DEFAULT_POLICY = "truncate"
  TASK_FEATURES = {"tokens": FeatureSpec(tf.int32), "lang": FeatureSpec(tf.int32, rank=0)}
  MODEL_FEATURES = {"tokens": FeatureSpec(tf.int32), "tokens_mask": FeatureSpec(tf.int32),
                    "lang": FeatureSpec(tf.int32, rank=0)}

  def _convert_features(self, ds, task_feature_lengths):
    length = task_feature_lengths["tokens"]
    ds = self._drop_over_length(ds, lambda ex: tf.shape(ex["tokens"])[0] > length)

    @tf.autograph.experimental.do_not_convert
    def convert(ex):
      if self.over_length == "truncate":
        preprocessors.count_if(tf.shape(ex["tokens"])[0] > length, self.counter_name("truncated"))
      tokens, mask = _pad(ex["tokens"], length)
      return self._extra(ex, {"tokens": tokens, "tokens_mask": mask, "lang": ex["lang"]}, task_feature_lengths)
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    n = task_feature_lengths["tokens"]
    return {"tokens": n, "tokens_mask": n, "lang": 0}


@gin.register
class PairedFeatureConverter(_StreamConverter):
  """{audio, tokens, lang} -> audio/audio_mask [Sp], tokens/tokens_mask [Lp], lang."""

  POLICIES = PAIRED_POLICIES
  DEFAULT_POLICY = "drop"
  TASK_FEATURES = {"audio": FeatureSpec(tf.float32), "tokens": FeatureSpec(tf.int32),
                   "lang": FeatureSpec(tf.int32, rank=0)}
  MODEL_FEATURES = {"audio": FeatureSpec(tf.float32), "audio_mask": FeatureSpec(tf.int32),
                    "tokens": FeatureSpec(tf.int32), "tokens_mask": FeatureSpec(tf.int32),
                    "lang": FeatureSpec(tf.int32, rank=0)}

  def _convert_features(self, ds, task_feature_lengths):
    audio_length = task_feature_lengths["audio"]
    tokens_length = task_feature_lengths["tokens"]

    @tf.autograph.experimental.do_not_convert
    def too_long(ex):
      return tf.logical_or(tf.shape(ex["audio"])[0] > audio_length,
                           tf.shape(ex["tokens"])[0] > tokens_length)
    ds = self._drop_over_length(ds, too_long)

    @tf.autograph.experimental.do_not_convert
    def convert(ex):
      if self.over_length == "truncate":
        preprocessors.count_if(too_long(ex), self.counter_name("truncated"))
      audio, audio_mask = _pad(ex["audio"], audio_length)
      tokens, tokens_mask = _pad(ex["tokens"], tokens_length)
      return self._extra(ex, {"audio": audio, "audio_mask": audio_mask, "tokens": tokens,
                              "tokens_mask": tokens_mask, "lang": ex["lang"]}, task_feature_lengths)
    return ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)

  def get_model_feature_lengths(self, task_feature_lengths):
    s, n = task_feature_lengths["audio"], task_feature_lengths["tokens"]
    return {"audio": s, "audio_mask": s, "tokens": n, "tokens_mask": n, "lang": 0}


class _PhonesMixin:
  """A stream's features plus {phones i32[P], phones_mask i32[P]}: the text's stored eSpeak phones
  (mslam_jax.data.phones) for the phone-level objectives. Phones over P are cut, counted as
  `truncated_phones/...`; the item's other features follow the stream's policy."""

  def __call__(self, ds, task_feature_lengths):
    if "phones" not in ds.element_spec:
      raise ValueError("make_step_iterator.*_phones_length is set, but the Tasks carry no phones: register "
                       "the corpus with them (register_builtin_corpus.phones = True or "
                       "register_prepared_corpora.phones = True; gin_configs/experiments/phone_injection.gin)")
    return super().__call__(ds, task_feature_lengths)

  def _extra(self, ex, out, task_feature_lengths):
    length = task_feature_lengths["phones"]
    preprocessors.count_if(tf.shape(ex["phones"])[0] > length, self.counter_name("truncated_phones"))
    out["phones"], out["phones_mask"] = _pad(ex["phones"], length)
    return out

  def get_model_feature_lengths(self, task_feature_lengths):
    n = task_feature_lengths["phones"]
    return {**super().get_model_feature_lengths(task_feature_lengths), "phones": n, "phones_mask": n}


_PHONE_TASK_FEATURES = {"phones": FeatureSpec(tf.int32)}
_PHONE_MODEL_FEATURES = {"phones": FeatureSpec(tf.int32), "phones_mask": FeatureSpec(tf.int32)}


@gin.register
class TextPhonesFeatureConverter(_PhonesMixin, TextFeatureConverter):
  """TextFeatureConverter's features plus the text's phones (_PhonesMixin)."""
  TASK_FEATURES = {**TextFeatureConverter.TASK_FEATURES, **_PHONE_TASK_FEATURES}
  MODEL_FEATURES = {**TextFeatureConverter.MODEL_FEATURES, **_PHONE_MODEL_FEATURES}


@gin.register
class PairedPhonesFeatureConverter(_PhonesMixin, PairedFeatureConverter):
  """PairedFeatureConverter's features plus the transcript's phones (_PhonesMixin)."""
  TASK_FEATURES = {**PairedFeatureConverter.TASK_FEATURES, **_PHONE_TASK_FEATURES}
  MODEL_FEATURES = {**PairedFeatureConverter.MODEL_FEATURES, **_PHONE_MODEL_FEATURES}


CONVERTERS = {"speech": SpeechFeatureConverter, "text": TextFeatureConverter,
              "paired": PairedFeatureConverter}
