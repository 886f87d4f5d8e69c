"""The in-process eSpeak NG binding."""
import os
import signal
import threading

import numpy as np
import pytest

from mslam_jax.data import espeak


def _voiced_ms(audio: np.ndarray) -> np.ndarray:
  """Per 10 ms frame: whether it carries sound."""
  hop = espeak.SAMPLE_RATE // 100
  frames = audio[:len(audio) // hop * hop].reshape(-1, hop)
  energy = np.sqrt((frames ** 2).mean(axis=1))
  return energy > 0.02 * energy.max()


def test_lists_voices_of_many_languages():
  names = {v.name for v in espeak.list_voices()}
  assert {"en", "en-US", "de", "ru", "cmn", "ja"} <= names
  assert len(names) > 100


def test_synthesizes_16khz_audio_with_word_timings():
  text = "Monday, Tuesday and Wednesday"
  result = espeak.synthesize(text, espeak.SpeakerStyle("en-US"))
  assert result.audio.dtype == np.float32 and result.audio.ndim == 1
  assert np.all(np.abs(result.audio) <= 1.0) and np.abs(result.audio).max() > 0.05
  seconds = len(result.audio) / espeak.SAMPLE_RATE
  assert 1.0 < seconds < 4.0
  assert result.words == ["Monday", "Tuesday", "and", "Wednesday"]
  starts, ends = np.array(result.word_starts_ms), np.array(result.word_ends_ms)
  assert np.all(np.diff(starts) > 0) and np.all(ends > starts) and np.all(ends[:-1] <= starts[1:])
  assert ends[-1] <= seconds * 1000 + 10
  # The words are where the sound is: most of each word's span is voiced, the comma pause is not.
  voiced = _voiced_ms(result.audio)
  for s, e in zip(starts, ends):
    assert voiced[s // 10:e // 10].mean() > 0.6
  assert not voiced[ends[0] // 10 + 2:starts[1] // 10 - 1].any()


def test_word_positions_count_characters_not_bytes():
  result = espeak.synthesize("Январь и февраль", espeak.SpeakerStyle("ru"))
  assert result.words == ["Январь", "и", "февраль"]


def test_rate_variant_and_pitch_change_the_speaker():
  text = "eins zwei drei vier fünf"
  base = espeak.synthesize(text, espeak.SpeakerStyle("de", "", 175, 50))
  fast = espeak.synthesize(text, espeak.SpeakerStyle("de", "", 260, 50))
  female = espeak.synthesize(text, espeak.SpeakerStyle("de", "f2", 175, 50))
  assert len(fast.audio) < 0.85 * len(base.audio)
  assert not np.array_equal(base.audio[:4000], female.audio[:4000])
  assert base.words == fast.words == female.words
  again = espeak.synthesize(text, espeak.SpeakerStyle("de", "", 175, 50))
  np.testing.assert_array_equal(base.audio, again.audio)  # deterministic


def test_sample_style_is_seeded():
  voices = ("en", "en-US", "en-GB-scotland")
  a = [espeak.sample_style(np.random.default_rng(3), voices) for _ in range(2)]
  assert a[0] == a[1]
  styles = {espeak.sample_style(np.random.default_rng(i), voices) for i in range(20)}
  assert len({s.variant for s in styles}) > 3 and len({s.voice for s in styles}) == 3
  assert all(espeak.RATE_RANGE_WPM[0] <= s.rate_wpm <= espeak.RATE_RANGE_WPM[1] for s in styles)
  assert a[0].describe().startswith(a[0].voice)


def test_unknown_voice_is_an_error():
  with pytest.raises(espeak.EspeakError, match="no-such-voice"):
    espeak.synthesize("hello", espeak.SpeakerStyle("no-such-voice"))


def test_concurrent_calls_are_serialized():
  texts = ["one two three", "quatre cinq six", "sieben acht neun", "diez once doce"]
  voices = ["en", "fr", "de", "es"]
  expected = [espeak.synthesize(t, espeak.SpeakerStyle(v)) for t, v in zip(texts, voices)]
  results = [None] * len(texts)

  def work(i):
    results[i] = espeak.synthesize(texts[i], espeak.SpeakerStyle(voices[i]))

  threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  for got, want in zip(results, expected):
    np.testing.assert_array_equal(got.audio, want.audio)
    assert got.words == want.words


def _kill_child(worker) -> int:
  pid = worker.pid
  os.kill(pid, signal.SIGKILL)
  worker._process.join(10)  # pylint: disable=protected-access  (dead and reaped before the next call)
  return pid


def test_worker_gives_the_same_clips_and_survives_a_dead_process(monkeypatch):
  text, style = "dos tres cuatro", espeak.SpeakerStyle("es", "m3", 160, 45)
  expected = espeak.synthesize(text, style)
  with espeak.SynthesisWorker(timeout_s=60) as worker:
    got = worker(text, style)
    np.testing.assert_array_equal(got.audio, expected.audio)
    assert got.words == expected.words
    with pytest.raises(espeak.EspeakError, match="no-such-voice"):
      worker("hola", espeak.SpeakerStyle("no-such-voice"))
    # The child dies during a clip (as eSpeak does on some inputs; the parent has not seen it yet):
    # that clip fails, naming the death, and the next one works.
    pid = _kill_child(worker)
    monkeypatch.setattr(worker._process, "is_alive", lambda: True)  # pylint: disable=protected-access
    with pytest.raises(espeak.EspeakError, match="died"):
      worker(text, style)
    again = worker(text, style)
    assert worker.pid != pid and worker.restarts == 1
    np.testing.assert_array_equal(again.audio, expected.audio)
    # A death seen before the next clip: a fresh child, and that clip is not lost.
    pid = _kill_child(worker)
    third = worker(text, style)
    assert worker.pid != pid and worker.restarts == 2
    np.testing.assert_array_equal(third.audio, expected.audio)


def test_pool_speaks_side_by_side_in_order_and_returns_failures_in_place():
  jobs = [("one two three", espeak.SpeakerStyle("en")), ("hola", espeak.SpeakerStyle("no-such-voice")),
          ("quatre cinq six", espeak.SpeakerStyle("fr", "f2", 190, 40)),
          ("sieben acht neun", espeak.SpeakerStyle("de"))]
  with espeak.SynthesisPool(workers=2) as pool:
    got = list(pool.map(jobs))
    pids = {w.pid for w in pool._workers}  # pylint: disable=protected-access
    assert len(pids) == 2 and None not in pids  # both children spoke
    with pytest.raises(espeak.EspeakError, match="no-such-voice"):
      pool(*jobs[1])
  sequential = list(espeak.synthesize_all(espeak.synthesize, jobs))
  assert isinstance(got[1], espeak.EspeakError) and isinstance(sequential[1], espeak.EspeakError)
  for index in (0, 2, 3):
    np.testing.assert_array_equal(got[index].audio, sequential[index].audio)
    assert got[index].words == sequential[index].words == espeak.synthesize(*jobs[index]).words


def test_a_synthesizer_that_speaks_nothing_stops_the_build_but_one_failure_does_not():
  style = espeak.SpeakerStyle("en")
  calls = []

  def broken(text, style):
    calls.append(text)
    raise espeak.EspeakError("the synthesizer process died (exit code 1)")

  with pytest.raises(espeak.EspeakError, match=r"failed on the first 3 clips and spoke none.*__main__"):
    list(espeak.synthesize_all(broken, [(str(i), style) for i in range(10)], give_up_after=3))
  assert len(calls) == 3  # it stops there, not after trying every clip

  def flaky(text, style):
    if int(text) < 2 or int(text) > 4:  # two failures, then clips, then failures again: all kept in place
      raise espeak.EspeakError(f"clip {text}")
    return text

  got = list(espeak.synthesize_all(flaky, [(str(i), style) for i in range(10)], give_up_after=3))
  assert [g if isinstance(g, str) else "x" for g in got] == ["x", "x", "2", "3", "4", "x", "x", "x", "x", "x"]
