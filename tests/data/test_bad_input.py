"""Bad items are skipped with a counted reason and nothing else is lost; repairs are counted."""
import json
import os

import numpy as np
import soundfile

from mslam_jax.data import audio as audio_lib
from mslam_jax.data import builtin_corpus
from mslam_jax.data import espeak

RATE = audio_lib.SAMPLE_RATE


def _tone(seconds: float, rate: int = RATE, channels: int = 1) -> np.ndarray:
  t = np.arange(int(seconds * rate)) / rate
  mono = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
  return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def _check(item: audio_lib.RawItem, reason: str | None, **kwargs):
  """Validates one item; returns (utterance or None, counter) after checking the counted reason."""
  counter = audio_lib.SkipCounter()
  utt = audio_lib.validate_item(item, counter, **kwargs)
  if reason is None:
    assert utt is not None and counter.total_skipped == 0
  else:
    assert utt is None and dict(counter.skipped) == {reason: 1}
    assert counter.examples[reason][0].startswith(item.id)
  return utt, counter


def test_unreadable_audio_file(tmp_path):
  path = tmp_path / "broken.wav"
  path.write_bytes(b"RIFF\x00\x00not really a wave file")
  _check(audio_lib.RawItem("a1", "eng", "hello", audio_path=str(path)), audio_lib.UNREADABLE_AUDIO)
  _check(audio_lib.RawItem("a2", "eng", "hello", audio_path=str(tmp_path / "missing.flac")),
         audio_lib.UNREADABLE_AUDIO)


def test_empty_audio_file(tmp_path):
  path = tmp_path / "empty.wav"
  soundfile.write(str(path), np.zeros([0], np.float32), RATE)
  _check(audio_lib.RawItem("e1", "eng", "hello", audio_path=str(path)), audio_lib.EMPTY_AUDIO)


def test_wrong_sample_rate_is_resampled_and_counted(tmp_path):
  path = tmp_path / "cd.wav"
  soundfile.write(str(path), _tone(1.0, 44_100), 44_100)
  utt, counter = _check(audio_lib.RawItem("r1", "eng", "hello", audio_path=str(path)), None)
  assert counter.repaired == {audio_lib.RESAMPLED: 1}
  assert len(utt.audio) == RATE  # one second at 16 kHz
  # The tone survives resampling: its spectrum peaks at 220 Hz.
  assert abs(np.argmax(np.abs(np.fft.rfft(utt.audio))) * RATE / len(utt.audio) - 220) <= 1
  _check(audio_lib.RawItem("r2", "eng", "hello", audio=_tone(0.1), sample_rate=100),
         audio_lib.INVALID_SAMPLE_RATE)


def test_stereo_is_downmixed_and_counted(tmp_path):
  path = tmp_path / "stereo.wav"
  stereo = _tone(0.5, channels=2)
  stereo[:, 1] = 0.0
  soundfile.write(str(path), stereo, RATE)
  utt, counter = _check(audio_lib.RawItem("s1", "eng", "hello", audio_path=str(path)), None)
  assert counter.repaired == {audio_lib.DOWNMIXED: 1}
  assert utt.audio.ndim == 1 and len(utt.audio) == len(stereo)
  np.testing.assert_allclose(utt.audio, stereo[:, 0] / 2, atol=1e-4)
  # A channels-first array is recognized too.
  utt, _ = _check(audio_lib.RawItem("s2", "eng", "hello", audio=stereo.T.copy()), None)
  assert len(utt.audio) == len(stereo)


def test_nan_or_inf_samples():
  audio = _tone(0.5)
  audio[100] = np.nan
  _check(audio_lib.RawItem("n1", "eng", "hello", audio=audio), audio_lib.NON_FINITE_AUDIO)
  audio[100] = np.inf
  _check(audio_lib.RawItem("n2", "eng", "hello", audio=audio), audio_lib.NON_FINITE_AUDIO)


def test_over_long_clip():
  _check(audio_lib.RawItem("l1", "eng", "hello", audio=_tone(3.0)), audio_lib.TOO_LONG, max_seconds=2.0)
  _check(audio_lib.RawItem("l2", "eng", "hello", audio=_tone(1.5)), None, max_seconds=2.0)


def test_empty_text():
  _check(audio_lib.RawItem("t1", "eng", " \t\n\u3000", audio=_tone(0.5)), audio_lib.EMPTY_TEXT)
  _check(audio_lib.RawItem("t2", "eng", ""), audio_lib.EMPTY_TEXT)


def test_invalid_text():
  _check(audio_lib.RawItem("i1", "eng", b"caf\xe9 au lait"), audio_lib.INVALID_TEXT)  # Latin-1, not UTF-8
  _check(audio_lib.RawItem("i2", "eng", "\x00\x07\u200e\x1b"), audio_lib.INVALID_TEXT)
  _check(audio_lib.RawItem("i3", "eng", "abc\udcff"), audio_lib.INVALID_TEXT)  # lone surrogate
  utt, _ = _check(audio_lib.RawItem("i4", "eng", " caf\u0065\u0301\x00 au  lait ".encode()), None)
  assert utt.text == "caf\u00e9 au lait"


def test_unknown_language_code():
  _check(audio_lib.RawItem("u1", "xx", "hello"), audio_lib.UNKNOWN_LANGUAGE)
  _check(audio_lib.RawItem("u2", "english", "hello"), audio_lib.UNKNOWN_LANGUAGE)


def test_bad_items_lose_nothing_else(tmp_path):
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"\x00" * 64)
  nan = _tone(0.3)
  nan[5] = np.nan
  good = [audio_lib.RawItem(f"good{i}", "deu", f"Satz {i}", audio=_tone(0.2 + 0.1 * i)) for i in range(3)]
  bad = [audio_lib.RawItem("b1", "deu", "x", audio_path=str(broken)),
         audio_lib.RawItem("b2", "deu", "x", audio=nan),
         audio_lib.RawItem("b3", "qqq", "x", audio=_tone(0.2)),
         audio_lib.RawItem("b4", "deu", "   ", audio=_tone(0.2))]
  counter = audio_lib.SkipCounter()
  kept = list(audio_lib.validate_items([good[0], bad[0], bad[1], good[1], bad[2], bad[3], good[2]], counter))
  assert [u.id for u in kept] == ["good0", "good1", "good2"]
  for utt, item in zip(kept, good):
    np.testing.assert_array_equal(utt.audio, item.audio)
    assert utt.text == item.text
  assert counter.total_skipped == 4 and len(counter.skipped) == 4
  assert "4 skipped" not in counter.summary() and "1 skipped (unreadable_audio)" in counter.summary()


def test_builder_skips_bad_clips_and_unknown_languages(tmp_path):
  """Broken synthesizer output is skipped and counted in the manifest; the rest is written."""
  calls = []

  def flaky_synthesize(text, style):
    calls.append(text)
    n = len(calls)
    seconds = 0.05 * len(text)
    audio = _tone(seconds)
    if n == 2:
      audio[10] = np.nan
    elif n == 3:
      audio = np.zeros([0], np.float32)
    elif n == 5:
      audio = _tone(25.0)
    elif n == 7:
      raise espeak.EspeakError("voice crashed")
    words = text.split()
    step = int(seconds * 1000) // max(1, len(words))
    return espeak.Synthesis(audio=audio, words=words, word_starts_ms=[i * step for i in range(len(words))],
                            word_ends_ms=[(i + 1) * step - 1 for i in range(len(words))])

  out = str(tmp_path / "corpus")
  manifest = builtin_corpus.build_builtin_corpus(
      out, languages_=("eng", "xyz", "deu"), held_out=(), per_language=4, text_per_language=3,
      progress=False, synthesize=flaky_synthesize, max_seconds=20.0)
  assert manifest["skipped"] == {audio_lib.NON_FINITE_AUDIO: 1, audio_lib.EMPTY_AUDIO: 1,
                                 audio_lib.TOO_LONG: 1, builtin_corpus.SYNTHESIS_FAILED: 1,
                                 audio_lib.UNKNOWN_LANGUAGE: 1}
  assert set(manifest["languages"]) == {"eng", "deu"}
  clips = sum(split["clips"] for lang in manifest["languages"].values()
              for stream in ("speech", "paired") for split in lang["streams"][stream].values())
  assert len(calls) == 16 and clips == 16 - 4
  assert all(lang["streams"]["text"]["train"]["clips"] == 1 for lang in manifest["languages"].values())
  with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
    assert json.load(f)["skipped"] == manifest["skipped"]
