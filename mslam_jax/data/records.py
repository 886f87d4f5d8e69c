"""The on-disk record of every corpus the project writes: one tf.train.Example per utterance.

A corpus directory holds `manifest.json`, `vocab/` and one TFRecord shard set per
(stream, language, split): `{stream}/{lang}/{split}.tfrecord-{i:05d}-of-{n:05d}`.
Streams are `speech` (audio; its text is kept but never used for training), `text` (no audio) and
`paired` (audio and its transcript, with the synthesizer's word timings).

Audio is stored as 16 kHz mono little-endian int16 PCM (half the bytes of float32, and what any
recording is anyway); readers turn it into float32 in [-1, 1).
"""
import dataclasses
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16_000
STREAMS = ("speech", "text", "paired")
SPLITS = ("train", "validation", "test")


@dataclasses.dataclass
class Utterance:
  """One item of a corpus. `audio` is float32 mono at SAMPLE_RATE, empty for the text stream."""
  id: str
  lang: str  # ISO 639-3 code, a key of the language registry.
  text: str = ""
  audio: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros([0], np.float32))
  voice: str = ""  # the speaker variant (synthesizer voice, rate, pitch) for synthetic speech
  words: Sequence[str] = ()
  word_starts_ms: Sequence[int] = ()
  word_ends_ms: Sequence[int] = ()
  phones: str = ""  # text items: the text as eSpeak's IPA for the language, "" where it has no voice


def shard_pattern(stream: str, lang: str, split: str) -> str:
  """Glob of a shard set, relative to the corpus directory."""
  return f"{stream}/{lang}/{split}.tfrecord-*"


def shard_name(stream: str, lang: str, split: str, index: int, count: int) -> str:
  return f"{stream}/{lang}/{split}.tfrecord-{index:05d}-of-{count:05d}"


def audio_to_pcm16(audio: np.ndarray) -> bytes:
  return (np.clip(audio, -1.0, 32767 / 32768) * 32768).astype("<i2").tobytes()


def pcm16_to_audio(pcm: bytes) -> np.ndarray:
  return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


def to_example_bytes(utt: Utterance) -> bytes:
  """Serializes an utterance as a tf.train.Example."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def b(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

  def i(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in values]))

  feature = {
      "id": b([utt.id.encode()]),
      "lang": b([utt.lang.encode()]),
      "text": b([utt.text.encode("utf-8")]),
      "audio_pcm16": b([audio_to_pcm16(np.asarray(utt.audio, np.float32))]),
      "num_samples": i([len(utt.audio)]),
      "voice": b([utt.voice.encode()]),
      "words": b([w.encode("utf-8") for w in utt.words]),
      "word_starts_ms": i(utt.word_starts_ms),
      "word_ends_ms": i(utt.word_ends_ms),
      "phones": b([utt.phones.encode("utf-8")]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_description():
  """tf.io.parse_single_example spec for the records above."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {
      "id": tf.io.FixedLenFeature([], tf.string),
      "lang": tf.io.FixedLenFeature([], tf.string),
      "text": tf.io.FixedLenFeature([], tf.string),
      "audio_pcm16": tf.io.FixedLenFeature([], tf.string),
      "num_samples": tf.io.FixedLenFeature([], tf.int64),
      "voice": tf.io.FixedLenFeature([], tf.string),
      "words": tf.io.VarLenFeature(tf.string),
      "word_starts_ms": tf.io.VarLenFeature(tf.int64),
      "word_ends_ms": tf.io.VarLenFeature(tf.int64),
      # Corpora written before phones were stored read as "" (no phones).
      "phones": tf.io.FixedLenFeature([], tf.string, default_value=""),
  }


def from_example_bytes(data: bytes) -> Utterance:
  """Parses one serialized record back into an Utterance (for tests and evaluation, not training)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  example = tf.train.Example.FromString(data)
  f = example.features.feature
  return Utterance(
      id=f["id"].bytes_list.value[0].decode(),
      lang=f["lang"].bytes_list.value[0].decode(),
      text=f["text"].bytes_list.value[0].decode("utf-8"),
      audio=pcm16_to_audio(f["audio_pcm16"].bytes_list.value[0]),
      voice=f["voice"].bytes_list.value[0].decode(),
      words=[w.decode("utf-8") for w in f["words"].bytes_list.value],
      word_starts_ms=list(f["word_starts_ms"].int64_list.value),
      word_ends_ms=list(f["word_ends_ms"].int64_list.value),
      phones=f["phones"].bytes_list.value[0].decode("utf-8") if "phones" in f else "",
  )


# The manifest key (manifest.json of a corpus) listing the held-out languages: those whose paired
# data pre-training never sees (the zero-shot test languages).
HELD_OUT_KEY = "held_out_languages"


def held_out_languages(manifest: dict) -> list[str]:
  """A corpus manifest's held-out languages (sorted); none when the manifest lists none."""
  return sorted(manifest.get(HELD_OUT_KEY, ()))
