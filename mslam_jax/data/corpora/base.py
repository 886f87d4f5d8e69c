"""What every corpus reader yields (`Record`), and turning a record into corpus utterances.

A reader walks one corpus's on-disk release and yields `Record`s: metadata only (file, segment,
transcript, language, split, speaker), cheap to list. `to_utterances` decodes one record's audio
(any format and rate soundfile reads), resamples to 16 kHz mono, cuts a long unlabeled recording
into clips of at most `max_clip_seconds` (equal parts, so no clip is a sliver) and returns
`records.Utterance`s. A bad row or clip is counted under a reason in the `SkipCounter` and skipped.
"""
import csv
import dataclasses
import io
import math
import os
from typing import Iterable, Iterator, Mapping

import numpy as np

from mslam_jax.data import audio as audio_lib
from mslam_jax.data import inventory
from mslam_jax.data import phones
from mslam_jax.data import records

SPLIT_NAMES = {"train": "train", "dev": "validation", "validation": "validation", "valid": "validation",
               "test": "test", "eval": "test", "training": "train"}
# Skip reasons that only corpus readers have (audio.py holds the general ones).
MALFORMED_ROW = "malformed_row"
MISSING_AUDIO = "missing_audio"
MARKUP_ONLY_TEXT = "markup_only_text"
TOO_SHORT = "too_short"
TEXT_STREAM = "text"


@dataclasses.dataclass
class Record:
  """One item of an outside corpus, before decoding."""
  corpus: str
  id: str
  lang: str  # ISO 639-3, a code of the pinned inventory
  split: str  # train / validation / test
  text: str = ""  # transcript (or text-stream text); "" for unlabeled speech
  audio_path: str | None = None
  audio_bytes: bytes | None = None  # encoded audio held in the index (parquet shards)
  start_s: float = 0.0  # segment of the file (BABEL turns, VoxPopuli sessions)
  end_s: float | None = None
  speaker: str = ""
  duration_s: float | None = None  # when known without decoding
  labels: Mapping[str, str] = dataclasses.field(default_factory=dict)  # translation, intent, corpus code

  @property
  def has_audio(self) -> bool:
    return self.audio_path is not None or self.audio_bytes is not None


def split_name(name: str) -> str | None:
  return SPLIT_NAMES.get(name.lower())


def resolve_language(corpus: str, code: str, counter: audio_lib.SkipCounter, where: str) -> str | None:
  """ISO 639-3 of a corpus code, or None (counted once per call as unknown_language)."""
  entry = inventory.from_corpus_code(corpus, code)
  if entry is None:
    counter.skip(audio_lib.UNKNOWN_LANGUAGE, where, f"{corpus} code {code!r} is not in the pinned inventory")
    return None
  return entry.code


def read_tsv(path: str, counter: audio_lib.SkipCounter, header: bool = True,
             columns: int | Iterable[int] | None = None, delimiter: str = "\t") -> Iterator[list[str] | dict]:
  """Rows of a tab-separated file, QUOTE_NONE (transcripts hold quotes). With `header`, dicts by
  column name; a row whose field count differs from the header (or is not in `columns`) is
  counted as malformed and skipped."""
  allowed = {columns} if isinstance(columns, int) else set(columns) if columns else None
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    names = next(reader, None) if header else None
    for lineno, row in enumerate(reader, start=2 if header else 1):
      if not row or row == [""]:
        continue
      ok = len(row) == len(names) if names is not None else (allowed is None or len(row) in allowed)
      if not ok:
        counter.skip(MALFORMED_ROW, f"{path}:{lineno}", f"{len(row)} fields")
        continue
      yield dict(zip(names, row)) if names is not None else row


def _read_audio(record: Record) -> tuple[np.ndarray, int]:
  """(samples [frames, channels], rate) of the record's segment; BadItem when unreadable."""
  import soundfile  # pylint: disable=g-import-not-at-top
  source = io.BytesIO(record.audio_bytes) if record.audio_bytes is not None else record.audio_path
  if record.audio_path is not None and record.audio_bytes is None and not os.path.exists(record.audio_path):
    raise audio_lib.BadItem(MISSING_AUDIO, f"{record.audio_path} does not exist")
  if "parquet_row" in record.labels:  # a row of a parquet shard: its audio column's encoded bytes
    from mslam_jax.data.corpora import parquet_audio  # pylint: disable=g-import-not-at-top
    group, row = map(int, record.labels["parquet_row"].split(":"))
    source = io.BytesIO(parquet_audio.audio_bytes(record.audio_path, group, row))
  try:
    with soundfile.SoundFile(source) as f:
      rate = f.samplerate
      start = int(round(record.start_s * rate))
      stop = f.frames if record.end_s is None else min(f.frames, int(round(record.end_s * rate)))
      if start:
        f.seek(start)
      data = f.read(max(0, stop - start), dtype="float32", always_2d=True)
  except audio_lib.BadItem:
    raise
  except Exception as e:  # pylint: disable=broad-except  (libsndfile raises several types)
    raise audio_lib.BadItem(audio_lib.UNREADABLE_AUDIO, f"cannot decode {record.audio_path or 'bytes'}: {e}") from e
  return data, rate


def to_utterances(record: Record, counter: audio_lib.SkipCounter, max_clip_seconds: float = 30.0,
                  min_clip_seconds: float = 0.5) -> list[records.Utterance]:
  """The record as utterances: one for text or a labeled clip, several for a long unlabeled one."""
  try:
    text = audio_lib.validate_text(record.text) if record.text else ""
    if not record.has_audio:
      if not text:
        raise audio_lib.BadItem(audio_lib.EMPTY_TEXT, "no text")
      # Its phones are what the phone-level objectives read (mslam_jax.data.phones).
      return [records.Utterance(id=record.id, lang=record.lang, text=text, phones=phones.phonemize(text, record.lang))]
    data, rate = _read_audio(record)
    audio = audio_lib.validate_audio(data, rate, record.id, counter, max_seconds=math.inf)
  except audio_lib.BadItem as e:
    counter.skip(e.reason, record.id, e.message)
    return []
  seconds = len(audio) / records.SAMPLE_RATE
  if seconds < min_clip_seconds:
    counter.skip(TOO_SHORT, record.id, f"{seconds:.2f} s < {min_clip_seconds} s")
    return []
  if seconds <= max_clip_seconds:
    return [records.Utterance(id=record.id, lang=record.lang, text=text, audio=audio, voice=record.speaker,
                              phones=phones.phonemize(text, record.lang))]
  if text:  # a transcript cannot be cut without an alignment
    counter.skip(audio_lib.TOO_LONG, record.id, f"labeled clip of {seconds:.1f} s > {max_clip_seconds} s")
    return []
  parts = math.ceil(seconds / max_clip_seconds)
  bounds = np.linspace(0, len(audio), parts + 1).astype(int)
  counter.repair("cut", record.id, f"{seconds:.1f} s cut into {parts} clips")
  return [records.Utterance(id=f"{record.id}-c{k:03d}", lang=record.lang, audio=audio[a:b], voice=record.speaker)
          for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]


def to_example_bytes(utt: records.Utterance, record: Record) -> bytes:
  """The record format of records.py plus the corpus's labels (`label/<name>` bytes features,
  which training's parse spec ignores): source corpus, its language code, translation, intent."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  example = tf.train.Example.FromString(records.to_example_bytes(utt))
  labels = {"corpus": record.corpus, "split": record.split, **record.labels}
  for key, value in sorted(labels.items()):
    example.features.feature[f"label/{key}"].bytes_list.value.append(str(value).encode("utf-8"))
  return example.SerializeToString()
