"""Decoding and validation of corpus items: audio files or arrays, text, language codes.

Used by the built-in corpus builder and by any reader of outside corpora. A bad item never stops
a job: `validate_item` returns None for it, and the `SkipCounter` counts it under a reason and
logs one clear line; repairs (resampling a valid other rate, downmixing stereo) are counted too.
"""
import collections
import dataclasses
import logging
import math
from typing import Iterable, Iterator, Mapping

import numpy as np

from mslam_jax.data import records

SAMPLE_RATE = records.SAMPLE_RATE
MAX_SECONDS = 30.0
# Rates a real recording may have; anything else is a broken header.
MIN_VALID_RATE = 4_000
MAX_VALID_RATE = 384_000
_MAX_CHANNELS = 32

# Skip reasons.
UNREADABLE_AUDIO = "unreadable_audio"
EMPTY_AUDIO = "empty_audio"
INVALID_SAMPLE_RATE = "invalid_sample_rate"
NON_FINITE_AUDIO = "non_finite_audio"
TOO_LONG = "too_long"
EMPTY_TEXT = "empty_text"
INVALID_TEXT = "invalid_text"
UNKNOWN_LANGUAGE = "unknown_language"
# Repairs (the item is kept).
RESAMPLED = "resampled"
DOWNMIXED = "downmixed"


class BadItem(ValueError):
  """An item that cannot enter a corpus; `reason` is one of the skip reasons above."""

  def __init__(self, reason: str, message: str):
    super().__init__(f"{reason}: {message}")
    self.reason = reason
    self.message = message


class SkipCounter:
  """Counts skipped items by reason and repaired items by kind; logs each with its id."""

  def __init__(self, logger: logging.Logger | None = None, max_examples: int = 5):
    self.skipped: collections.Counter = collections.Counter()
    self.repaired: collections.Counter = collections.Counter()
    self.examples: dict[str, list[str]] = collections.defaultdict(list)
    self._logger = logger or logging.getLogger(__name__)
    self._max_examples = max_examples

  def skip(self, reason: str, item_id: str, message: str) -> None:
    self.skipped[reason] += 1
    if len(self.examples[reason]) < self._max_examples:
      self.examples[reason].append(f"{item_id}: {message}")
    self._logger.warning("skipped %s (%s): %s [%d skipped for this reason so far]",
                         item_id, reason, message, self.skipped[reason])

  def repair(self, kind: str, item_id: str, message: str) -> None:
    self.repaired[kind] += 1
    self._logger.info("%s %s: %s", kind, item_id, message)

  def merge(self, other: "SkipCounter") -> None:
    self.skipped.update(other.skipped)
    self.repaired.update(other.repaired)
    for reason, examples in other.examples.items():
      room = self._max_examples - len(self.examples[reason])
      self.examples[reason].extend(examples[:max(0, room)])

  @property
  def total_skipped(self) -> int:
    return sum(self.skipped.values())

  def as_dict(self) -> dict:
    return {"skipped": dict(sorted(self.skipped.items())),
            "repaired": dict(sorted(self.repaired.items())),
            "examples": {k: list(v) for k, v in sorted(self.examples.items()) if v}}

  def summary(self) -> str:
    if not self.skipped and not self.repaired:
      return "no item skipped or repaired"
    parts = [f"{n} skipped ({r})" for r, n in sorted(self.skipped.items())]
    parts += [f"{n} {r}" for r, n in sorted(self.repaired.items())]
    return ", ".join(parts)


def read_audio_file(path: str) -> tuple[np.ndarray, int]:
  """(samples float32 [frames] or [frames, channels], sample rate) of any file soundfile reads."""
  import soundfile  # pylint: disable=g-import-not-at-top
  try:
    data, rate = soundfile.read(path, dtype="float32", always_2d=False)
  except Exception as e:  # pylint: disable=broad-except  (libsndfile raises several types)
    raise BadItem(UNREADABLE_AUDIO, f"cannot decode {path}: {e}") from e
  return data, int(rate)


def _to_float(audio: np.ndarray) -> np.ndarray:
  if np.issubdtype(audio.dtype, np.integer):
    info = np.iinfo(audio.dtype)
    scale = float(max(abs(info.min), info.max + 1))
    return (audio.astype(np.float64) / scale).astype(np.float32)
  if np.issubdtype(audio.dtype, np.floating):
    return audio.astype(np.float32, copy=False)
  raise BadItem(UNREADABLE_AUDIO, f"audio of dtype {audio.dtype} is not PCM")


def validate_audio(audio: np.ndarray, sample_rate: int, item_id: str = "?",
                   counter: SkipCounter | None = None, max_seconds: float = MAX_SECONDS) -> np.ndarray:
  """Mono float32 at SAMPLE_RATE, or BadItem.

  `audio` is [frames] or [frames, channels] (soundfile's layout); a [channels, frames] array with
  few rows is recognized too. A valid other rate is resampled and stereo is averaged (both counted
  in `counter`); an empty clip, NaN/Inf samples, an absurd rate or a clip over `max_seconds`
  raise BadItem.
  """
  audio = np.asarray(audio)
  if audio.ndim == 2:
    if audio.shape[0] <= _MAX_CHANNELS < audio.shape[1]:
      audio = audio.T
    if audio.shape[1] > _MAX_CHANNELS:
      raise BadItem(UNREADABLE_AUDIO, f"audio of shape {audio.shape} is not [frames, channels]")
  elif audio.ndim != 1:
    raise BadItem(UNREADABLE_AUDIO, f"audio of shape {audio.shape} is not [frames] or [frames, channels]")
  audio = _to_float(audio)
  if audio.shape[0] == 0:
    raise BadItem(EMPTY_AUDIO, "no samples")
  if not np.all(np.isfinite(audio)):
    bad = int(np.size(audio) - np.count_nonzero(np.isfinite(audio)))
    raise BadItem(NON_FINITE_AUDIO, f"{bad} NaN/Inf samples")
  if not (isinstance(sample_rate, (int, np.integer)) and MIN_VALID_RATE <= sample_rate <= MAX_VALID_RATE):
    raise BadItem(INVALID_SAMPLE_RATE, f"sample rate {sample_rate!r} outside [{MIN_VALID_RATE}, {MAX_VALID_RATE}] Hz")
  seconds = audio.shape[0] / sample_rate
  if seconds > max_seconds:
    raise BadItem(TOO_LONG, f"{seconds:.1f} s > {max_seconds:.1f} s")
  if audio.ndim == 2:
    if audio.shape[1] > 1 and counter is not None:
      counter.repair(DOWNMIXED, item_id, f"{audio.shape[1]} channels averaged to mono")
    audio = audio.mean(axis=1, dtype=np.float32)
  if sample_rate != SAMPLE_RATE:
    from scipy import signal  # pylint: disable=g-import-not-at-top
    g = math.gcd(int(sample_rate), SAMPLE_RATE)
    audio = signal.resample_poly(audio, SAMPLE_RATE // g, int(sample_rate) // g).astype(np.float32)
    if counter is not None:
      counter.repair(RESAMPLED, item_id, f"{sample_rate} Hz -> {SAMPLE_RATE} Hz")
  return np.ascontiguousarray(audio, dtype=np.float32)


def validate_text(text: str | bytes) -> str:
  """Cleaned text (NFC, whitespace, no control characters), or BadItem if nothing real is left."""
  from mslam_jax.data import text_sources  # pylint: disable=g-import-not-at-top
  if isinstance(text, bytes):
    try:
      text = text.decode("utf-8")
    except UnicodeDecodeError as e:
      raise BadItem(INVALID_TEXT, f"not UTF-8 ({e})") from e
  if not isinstance(text, str):
    raise BadItem(INVALID_TEXT, f"text of type {type(text).__name__}")
  if not text.strip():
    raise BadItem(EMPTY_TEXT, "empty or only whitespace")
  if any(0xD800 <= ord(ch) <= 0xDFFF for ch in text):
    raise BadItem(INVALID_TEXT, "lone surrogate code points (undecodable bytes)")
  cleaned = text_sources.clean_text(text)
  if not cleaned:
    raise BadItem(INVALID_TEXT, f"no letters after removing control/format characters: {text[:40]!r}")
  return cleaned


def validate_language(code: str) -> str:
  from mslam_jax.data import languages  # pylint: disable=g-import-not-at-top
  try:
    languages.get(code)
  except KeyError as e:
    raise BadItem(UNKNOWN_LANGUAGE, str(e)) from e
  return code


@dataclasses.dataclass
class RawItem:
  """An item as it comes from a source: audio as a file path or an array (with its rate)."""
  id: str
  lang: str
  text: str | bytes = ""
  audio_path: str | None = None
  audio: np.ndarray | None = None
  sample_rate: int = SAMPLE_RATE
  needs_text: bool = True
  extras: Mapping = dataclasses.field(default_factory=dict)  # other Utterance fields (words, voice)


def validate_item(item: RawItem, counter: SkipCounter, max_seconds: float = MAX_SECONDS
                  ) -> records.Utterance | None:
  """The item as a checked Utterance, or None (counted and logged) when it is bad."""
  try:
    lang = validate_language(item.lang)
    text = validate_text(item.text) if item.needs_text or item.text else ""
    audio = np.zeros([0], np.float32)
    if item.audio_path is not None:
      data, rate = read_audio_file(item.audio_path)
      audio = validate_audio(data, rate, item.id, counter, max_seconds)
    elif item.audio is not None:
      audio = validate_audio(item.audio, item.sample_rate, item.id, counter, max_seconds)
  except BadItem as e:
    counter.skip(e.reason, item.id, e.message)
    return None
  return records.Utterance(id=item.id, lang=lang, text=text, audio=audio, **dict(item.extras))


def validate_items(items: Iterable[RawItem], counter: SkipCounter,
                   max_seconds: float = MAX_SECONDS) -> Iterator[records.Utterance]:
  """The good items of `items`, in order; the bad ones are counted in `counter`."""
  for item in items:
    utterance = validate_item(item, counter, max_seconds)
    if utterance is not None:
      yield utterance


def read_audio_16k(path: str, max_seconds: float = 3600.0) -> np.ndarray:
  """Mono float32 16 kHz audio of any file soundfile reads (resampled and down-mixed as needed)."""
  samples, rate = read_audio_file(path)
  return validate_audio(samples, rate, item_id=path, max_seconds=max_seconds)


# The user commands (align, retrieve, langid) take clips of the length the model trains and is
# evaluated on; a recording of minutes would be encoded in one piece (attention is quadratic in its
# length: 300 s needs tens of GB) and is refused before it is decoded.
USER_MAX_SECONDS = MAX_SECONDS
# Shorter than the frontend's first frames (25 ms windows, 4x subsampling): no encoder output.
USER_MIN_SECONDS = 0.1


def read_user_audio(path: str, max_seconds: float = USER_MAX_SECONDS,
                    min_seconds: float = USER_MIN_SECONDS) -> np.ndarray:
  """Mono float32 16 kHz audio of a file a user passed, or ValueError/FileNotFoundError with a
  one-line reason naming the file. The header is checked before anything is decoded, so a
  multi-hour file costs nothing."""
  import os  # pylint: disable=g-import-not-at-top
  import soundfile  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such audio file")
  if os.path.isdir(path):
    raise ValueError(f"{path} is a directory, not an audio file")
  if os.path.getsize(path) == 0:
    raise ValueError(f"{path} is empty (0 bytes)")
  try:
    info = soundfile.info(path)
  except Exception as e:  # pylint: disable=broad-except  (libsndfile raises several types)
    raise ValueError(f"{path} is not an audio file soundfile can read ({' '.join(str(e).split())})") from None
  if not MIN_VALID_RATE <= info.samplerate <= MAX_VALID_RATE:
    raise ValueError(f"{path}: its header gives a sample rate of {info.samplerate} Hz (outside "
                     f"[{MIN_VALID_RATE}, {MAX_VALID_RATE}]): a broken or lying header")
  if info.frames / info.samplerate > max_seconds:
    raise ValueError(f"{path} is {info.frames / info.samplerate:.1f} s long; the commands take clips of at "
                     f"most {max_seconds:.0f} s (the length the model trains on): cut it into shorter files")
  try:
    audio = read_audio_16k(path, max_seconds=max_seconds)
  except BadItem as e:
    raise ValueError(f"{path}: {e.message} ({e.reason})") from None
  if audio.shape[0] < min_seconds * SAMPLE_RATE:
    raise ValueError(f"{path} is {audio.shape[0] / SAMPLE_RATE * 1000:.0f} ms long; at least "
                     f"{min_seconds * 1000:.0f} ms are needed")
  missing = _wav_missing_bytes(path)
  if missing:
    raise ValueError(f"{path} is truncated (or its header lies): the header announces {missing} more bytes "
                     "of samples than the file holds")
  return audio


def _wav_missing_bytes(path: str) -> int:
  """For a RIFF/WAVE file: how many bytes of its data chunk the header announces beyond the end of
  the file (libsndfile quietly reads what is there). 0 for other formats and streaming headers."""
  import os  # pylint: disable=g-import-not-at-top
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
      return 0
    offset = 12
    while offset + 8 <= size:
      f.seek(offset)
      chunk = f.read(8)
      length = int.from_bytes(chunk[4:8], "little")
      if chunk[:4] == b"data":
        if length in (0, 0xFFFFFFFF):  # written by a streaming recorder: size unknown
          return 0
        return max(0, offset + 8 + length - size)
      offset += 8 + length + (length & 1)
  return 0
