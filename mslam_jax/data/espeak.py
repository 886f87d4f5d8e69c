"""In-process speech synthesis with eSpeak NG through a small ctypes binding.

The library and its voice data come from the `espeakng-loader` wheel, so nothing is installed
system-wide and no subprocess is spawned. Synthesis runs in AUDIO_OUTPUT_SYNCHRONOUS mode: a
callback collects the 22.05 kHz samples and the WORD events, which become word timings (the
ground truth for alignment evaluation). eSpeak keeps global state and is not thread-safe, so every
call into it holds one process-wide lock.
"""
import ctypes
import dataclasses
import functools
import os
import threading
from typing import Sequence

import numpy as np

SAMPLE_RATE = 16_000

# speak_lib.h constants.
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # eSpeak calls exit() on a missing data dir without this.
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_PARAM_RATE = 1
_PARAM_PITCH = 3
_PARAM_RANGE = 4
_PHONEMES_IPA = 0x02  # espeak_TextToPhonemes' phonememode: UTF-8 IPA instead of eSpeak's mnemonics

# Voice variants (espeak-ng-data/voices/!v) that change formants and pitch: distinct "speakers".
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4")
# The built-in corpus speaks its evaluation splits with variants that its training split never
# uses, so that evaluation figures measure speech, not the memory of one synthetic speaker.
TRAIN_VARIANTS = ("", "m1", "m2", "m3", "f1", "f2", "f3")
EVAL_VARIANTS = ("m4", "m5", "f4")
RATE_RANGE_WPM = (135, 195)  # eSpeak default is 175.
PITCH_RANGE = (35, 70)  # 0..100, eSpeak default is 50.

_LOCK = threading.RLock()


class EspeakError(RuntimeError):
  """eSpeak NG failed to load, initialize or synthesize."""


class _Voice(ctypes.Structure):
  _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_void_p),
              ("identifier", ctypes.c_char_p), ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte),
              ("variant", ctypes.c_ubyte), ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int),
              ("spare", ctypes.c_void_p)]


class _EventId(ctypes.Union):
  _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
  _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint),
              ("text_position", ctypes.c_int), ("length", ctypes.c_int),
              ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
              ("user_data", ctypes.c_void_p), ("id", _EventId)]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclasses.dataclass(frozen=True)
class Voice:
  """An eSpeak NG voice: `name` is what espeak_SetVoiceByName takes (e.g. "en-US")."""
  name: str
  display_name: str
  languages: tuple[str, ...]  # BCP-47-like tags, lower case, most specific first


@dataclasses.dataclass(frozen=True)
class SpeakerStyle:
  """One synthetic speaker: a voice, a variant (formants/pitch), a speaking rate and pitch."""
  voice: str
  variant: str = ""
  rate_wpm: int = 175
  pitch: int = 50

  def describe(self) -> str:
    variant = f"+{self.variant}" if self.variant else ""
    return f"{self.voice}{variant};rate={self.rate_wpm};pitch={self.pitch}"


@dataclasses.dataclass
class Synthesis:
  audio: np.ndarray  # float32 mono at SAMPLE_RATE
  words: list[str]
  word_starts_ms: list[int]
  word_ends_ms: list[int]


def sample_style(rng: np.random.Generator, voices: Sequence[str],
                 variants: Sequence[str] = VARIANTS) -> SpeakerStyle:
  """A random speaker for one clip: voice (accent), variant (one of `variants`), rate and pitch."""
  return SpeakerStyle(
      voice=str(voices[rng.integers(len(voices))]),
      variant=variants[rng.integers(len(variants))],
      rate_wpm=int(rng.integers(RATE_RANGE_WPM[0], RATE_RANGE_WPM[1] + 1)),
      pitch=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)))


class _Engine:
  """The loaded library (eSpeak's state is global: one engine per process)."""

  def __init__(self):
    import espeakng_loader  # pylint: disable=g-import-not-at-top
    try:
      self.library_path = espeakng_loader.get_library_path()
      self.data_path = espeakng_loader.get_data_path()
    except RuntimeError as e:
      raise EspeakError(f"cannot find eSpeak NG in espeakng-loader: {e}") from e
    self.lib = None
    self.native_rate = 0
    self.chunks: list[np.ndarray] = []
    self.events: list[tuple[int, int, int]] = []  # (text_position, length, audio_position_ms)
    # Kept as an attribute: ctypes must hold the trampoline alive while the library may call it.
    self.callback = _SynthCallback(self._on_synth)
    self.pid = os.getpid()
    self.reload()

  def reload(self) -> None:
    """Loads the library afresh.

    eSpeak keeps synthesis state in static variables that neither espeak_Terminate nor
    espeak_Initialize resets (e.g. the pitch-flutter phase), so a clip would depend on every clip
    spoken before it in the process. Unloading the library (its only user) and loading it again
    makes each clip a function of its text and style alone; it costs about a millisecond.
    """
    if self.lib is not None:
      self.lib.espeak_Terminate()
      import _ctypes  # pylint: disable=g-import-not-at-top
      _ctypes.dlclose(self.lib._handle)  # pylint: disable=protected-access
      self.lib = None
    try:
      lib = ctypes.CDLL(self.library_path)
    except OSError as e:
      raise EspeakError(f"cannot load eSpeak NG from {self.library_path}: {e}") from e
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_Initialize.restype = ctypes.c_int
    lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetVoiceByName.restype = ctypes.c_int
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_SetParameter.restype = ctypes.c_int
    lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    lib.espeak_Synth.restype = ctypes.c_int
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
    lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
    self.native_rate = lib.espeak_Initialize(
        _AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(), _INITIALIZE_DONT_EXIT)
    if self.native_rate <= 0:
      raise EspeakError(f"espeak_Initialize failed with data at {self.data_path}")
    lib.espeak_SetSynthCallback(self.callback)
    # Noise and jitter come from eSpeak's own generator; seeded per clip too.
    self.set_seed = getattr(lib, "espeak_ng_SetRandSeed", None)
    if self.set_seed is not None:
      self.set_seed.argtypes = [ctypes.c_long]
      self.set_seed.restype = None
    self.lib = lib

  def _on_synth(self, wav, num_samples, events) -> int:
    if num_samples > 0 and wav:
      self.chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    i = 0
    while events[i].type != _EVENT_LIST_TERMINATED:
      event = events[i]
      if event.type == _EVENT_WORD:
        self.events.append((event.text_position, event.length, event.audio_position))
      i += 1
    return 0  # 0 = continue synthesis


_ENGINE: _Engine | None = None


def _engine() -> _Engine:
  global _ENGINE
  # A forked child inherits a copy of eSpeak's globals but not a working callback context.
  if _ENGINE is None or _ENGINE.pid != os.getpid():
    _ENGINE = _Engine()
  return _ENGINE


@functools.cache
def list_voices() -> tuple[Voice, ...]:
  """Every voice in the wheel's data that can speak (its dictionary is there), in eSpeak's order."""
  with _LOCK:
    lib = _engine().lib
    voices = lib.espeak_ListVoices(None)
    out = []
    i = 0
    while voices[i]:
      v = voices[i].contents
      # `languages` is a run of (priority byte, NUL-terminated tag) pairs, ended by a 0 byte.
      raw = ctypes.string_at(v.languages, 256)
      tags, j = [], 0
      while j < len(raw) and raw[j] != 0:
        end = raw.index(b"\0", j + 1)
        tags.append(raw[j + 1:end].decode("ascii", "replace").lower())
        j = end + 1
      identifier = v.identifier.decode()
      voice = Voice(name=identifier.split("/")[-1], display_name=v.name.decode().strip(),
                    languages=tuple(tags))
      if _has_dictionary(identifier, voice):
        out.append(voice)
      i += 1
  return tuple(out)


def text_to_phonemes(text: str, voice: str) -> str:
  """`text` as the IPA phonemes `voice` would speak (eSpeak's own letter-to-sound rules and
  dictionary: what its synthesis says), words separated by spaces; "" when eSpeak has no such
  voice. Clauses (eSpeak stops at punctuation) are joined by a space."""
  encoded = ctypes.create_string_buffer(text.encode("utf-8") + b"\0")
  with _LOCK:
    lib = _engine().lib
    if lib.espeak_SetVoiceByName(voice.encode()) != 0:
      return ""
    pointer = ctypes.c_void_p(ctypes.addressof(encoded))
    clauses = []
    while pointer.value:
      out = lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEMES_IPA)
      if out:
        clauses.append(out.decode("utf-8", "replace").strip())
  return " ".join(c for c in clauses if c)


def _has_dictionary(identifier: str, voice: Voice) -> bool:
  """Whether the voice's pronunciation dictionary is in the data (the wheel lacks a few, e.g.
  Faroese: such a voice makes a click and no words)."""
  data = _engine().data_path
  name = (voice.languages[0] if voice.languages else voice.name).split("-")[0]
  try:
    with open(os.path.join(data, "lang", identifier), encoding="utf-8", errors="replace") as f:
      for line in f:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "dictionary":
          name = parts[1]
  except OSError:
    pass
  return os.path.exists(os.path.join(data, f"{name}_dict"))


def _word_ends(audio: np.ndarray, starts: Sequence[int], rate: int) -> list[int]:
  """End of each word: the last voiced 10 ms frame before the next word starts (or clip end)."""
  hop = rate // 100
  frames = len(audio) // hop
  if frames == 0:
    return [int(s) + 1 for s in starts]
  energy = np.sqrt(np.mean(audio[:frames * hop].reshape(frames, hop) ** 2, axis=1))
  voiced = energy > max(1e-4, 0.02 * float(energy.max()))
  total_ms = frames * 10
  ends = []
  for i, start in enumerate(starts):
    limit = starts[i + 1] if i + 1 < len(starts) else total_ms
    first, last = start // 10, max(start // 10 + 1, limit // 10)
    idx = np.nonzero(voiced[first:last])[0]
    end = (first + idx[-1] + 1) * 10 if len(idx) else limit
    ends.append(int(min(max(end, start + 10), max(limit, start + 10))))
  return ends


def _synthesize_native(text: str, style: SpeakerStyle, seed: int = 0
                       ) -> tuple[np.ndarray, list[tuple[int, int, int]], int]:
  """eSpeak's own output: (int16 samples, WORD events, sample rate)."""
  encoded = text.encode("utf-8") + b"\0"
  with _LOCK:
    engine = _engine()
    engine.reload()
    lib = engine.lib
    name = style.voice + (f"+{style.variant}" if style.variant else "")
    if lib.espeak_SetVoiceByName(name.encode()) != 0:
      raise EspeakError(f"eSpeak NG has no voice {name!r}")
    lib.espeak_SetParameter(_PARAM_RATE, int(style.rate_wpm), 0)
    lib.espeak_SetParameter(_PARAM_PITCH, int(style.pitch), 0)
    engine.chunks, engine.events = [], []
    if engine.set_seed is not None:
      engine.set_seed(seed)
    buf = ctypes.create_string_buffer(encoded)
    err = lib.espeak_Synth(buf, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if err != 0:
      raise EspeakError(f"espeak_Synth failed with code {err} for {text[:40]!r}")
    chunks, events, native_rate = engine.chunks, engine.events, engine.native_rate
    engine.chunks, engine.events = [], []
  pcm = np.concatenate(chunks) if chunks else np.zeros([0], np.int16)
  return pcm, events, native_rate


def synthesize(text: str, style: SpeakerStyle, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> Synthesis:
  """Speaks `text` with `style`; audio at `sample_rate` with the word timings of eSpeak's events.

  The same (text, style, seed) gives the same samples, whatever was synthesized before.
  """
  return _finish(text, *_synthesize_native(text, style, seed), sample_rate)


def _finish(text: str, pcm: np.ndarray, events: Sequence[tuple[int, int, int]], native_rate: int,
            sample_rate: int) -> Synthesis:
  """Resampled audio and one (word, start, end) per written word."""
  audio = pcm.astype(np.float32) / 32768.0
  if sample_rate != native_rate:
    from scipy import signal  # pylint: disable=g-import-not-at-top
    g = np.gcd(sample_rate, native_rate)
    audio = signal.resample_poly(audio, sample_rate // g, native_rate // g).astype(np.float32)
    audio = np.clip(audio, -1.0, 32767 / 32768)
  words, starts = [], []
  covered = 0  # characters of `text` that earlier words span
  for text_position, length, audio_ms in events:
    # text_position counts characters from 1. A number spoken as several words ("2040") gives
    # one event per spoken word, all inside the written one: the written word is what counts.
    begin = text_position - 1
    word = text[begin:begin + length].strip()
    if not word or begin < covered:
      continue
    covered = begin + length
    if starts and audio_ms < starts[-1]:
      audio_ms = starts[-1]
    words.append(word)
    starts.append(int(audio_ms))
  ends = _word_ends(audio, starts, sample_rate)
  return Synthesis(audio=audio, words=words, word_starts_ms=starts, word_ends_ms=ends)


def _worker_main(conn) -> None:
  """The loop of a SynthesisWorker's child process."""
  while True:
    try:
      request = conn.recv()
    except (EOFError, OSError):
      return
    if request is None:
      return
    try:
      conn.send(("ok", _synthesize_native(*request)))
    except EspeakError as e:
      conn.send(("error", str(e)))


class SynthesisWorker:
  """`synthesize` in a child process, so that a crash of the library costs one clip, not the job.

  eSpeak NG crashes (SIGSEGV) on some inputs, e.g. digits with the Greenlandic voice. A dead or
  hung child raises EspeakError for that clip; the next call starts a fresh child. Clips are the
  same as in-process ones (each depends only on its text, style and seed).
  """

  def __init__(self, timeout_s: float = 60.0):
    self.timeout_s = timeout_s
    self._process = None
    self._conn = None
    self.restarts = 0

  @property
  def pid(self) -> int | None:
    return self._process.pid if self._process is not None else None

  def _start(self) -> None:
    import multiprocessing  # pylint: disable=g-import-not-at-top
    # spawn: a fork of a process holding TensorFlow's threads may deadlock.
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    process = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="espeak-worker")
    try:
      process.start()
    except BaseException:
      self._conn.close()
      self._conn = None
      raise
    finally:
      child.close()
    self._process = process

  def _stop(self, kill: bool) -> int | None:
    if self._process is None:
      return None
    process, conn = self._process, self._conn
    self._process = self._conn = None
    try:
      if not kill:
        conn.send(None)
    except OSError:
      pass
    process.join(timeout=0 if kill else 5)
    if process.is_alive():
      process.kill()
      process.join()
    conn.close()
    return process.exitcode

  def __call__(self, text: str, style: SpeakerStyle, sample_rate: int = SAMPLE_RATE, seed: int = 0
               ) -> Synthesis:
    if self._process is None or not self._process.is_alive():
      if self._process is not None:
        self._stop(kill=True)
        self.restarts += 1
      self._start()
    try:
      self._conn.send((text, style, seed))
      if not self._conn.poll(self.timeout_s):
        raise TimeoutError(f"no answer in {self.timeout_s:.0f} s")
      status, payload = self._conn.recv()
    except (EOFError, OSError, TimeoutError) as e:
      code = self._stop(kill=True)
      self.restarts += 1
      raise EspeakError(f"the synthesizer process died (exit code {code}; {str(e) or type(e).__name__}) "
                        f"on {text[:40]!r} with {style.describe()}") from e
    if status == "error":
      raise EspeakError(payload)
    # Resampling happens here: the child stays small (no SciPy) and starts fast.
    return _finish(text, *payload, sample_rate)

  def close(self) -> None:
    self._stop(kill=False)

  def __enter__(self) -> "SynthesisWorker":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _attempt(synthesize, job):
  """Synthesis of one (text, style[, sample_rate, seed]) job, or the EspeakError it raised."""
  try:
    return synthesize(*job)
  except EspeakError as e:
    return e


# A synthesizer that fails this many clips in a row before speaking any is broken, not unlucky.
GIVE_UP_AFTER = 16


def synthesize_all(synthesize, jobs: Sequence[tuple[str, SpeakerStyle]], give_up_after: int = GIVE_UP_AFTER):
  """(text, style) jobs -> an iterator, in their order, of Synthesis or the EspeakError that job
  raised. Side by side where `synthesize` has a `map` (SynthesisPool), else one after another.

  One clip's failure is that clip's (the caller skips and counts it); failures of the first
  `give_up_after` jobs with no clip spoken raise instead, since every clip would fail the same way
  (e.g. a script that builds a corpus without an `if __name__ == "__main__":` guard, whose worker
  processes cannot start).
  """
  results = synthesize.map(jobs) if hasattr(synthesize, "map") else (_attempt(synthesize, job) for job in jobs)
  return _give_up_if_nothing_speaks(results, give_up_after)


def _give_up_if_nothing_speaks(results, limit: int):
  failures, spoken = 0, False
  for result in results:
    if not spoken:
      if isinstance(result, EspeakError):
        failures += 1
        if failures >= limit:
          raise EspeakError(
              f"the synthesizer failed on the first {failures} clips and spoke none; the last error: {result}. "
              "From a Python script, call the corpus builder under `if __name__ == \"__main__\":` (its "
              "eSpeak workers are spawned processes that import the script again).")
      else:
        spoken = True
    yield result


class SynthesisPool:
  """Several SynthesisWorkers speaking side by side (eSpeak is single-threaded; a build is CPU-bound).

  `map` keeps its jobs' order and every clip depends only on its text, style and seed, so a build
  is the same whichever worker spoke which clip, and the same as with one worker.
  """

  def __init__(self, workers: int | None = None, timeout_s: float = 60.0):
    import queue  # pylint: disable=g-import-not-at-top
    from concurrent import futures  # pylint: disable=g-import-not-at-top
    count = workers or max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                   else os.cpu_count() or 1))
    self._workers = [SynthesisWorker(timeout_s) for _ in range(count)]
    self._free = queue.SimpleQueue()
    for worker in self._workers:
      self._free.put(worker)
    self._executor = futures.ThreadPoolExecutor(count, thread_name_prefix="espeak")

  @property
  def restarts(self) -> int:
    return sum(w.restarts for w in self._workers)

  def __call__(self, text: str, style: SpeakerStyle, sample_rate: int = SAMPLE_RATE, seed: int = 0
               ) -> Synthesis:
    worker = self._free.get()  # a free worker (one clip at a time each)
    try:
      return worker(text, style, sample_rate, seed)
    finally:
      self._free.put(worker)

  def map(self, jobs):
    """Synthesis, or the EspeakError raised, for each (text, style[, sample_rate, seed]) job, in order."""
    return self._executor.map(functools.partial(_attempt, self), list(jobs))

  def close(self) -> None:
    self._executor.shutdown(wait=True)
    for worker in self._workers:
      worker.close()

  def __enter__(self) -> "SynthesisPool":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
