"""User audio for align / retrieve / langid: each bad file ends with one line naming it and exit 2,
before any model loads; odd but valid files (8-bit, stereo 44.1 kHz, silence) are converted."""
import os
import resource
import wave

import numpy as np
import pytest

from tests.faults.conftest import run_cli, user_error_line

RATE = 16000


def _wav(path, samples, rate=RATE, width=2, channels=1):
  data = np.asarray(samples)
  with wave.open(str(path), "wb") as w:
    w.setnchannels(channels)
    w.setsampwidth(width)
    w.setframerate(rate)
    w.writeframes(data.tobytes())
  return str(path)


def _tone(seconds, rate=RATE):
  t = np.arange(int(seconds * rate)) / rate
  return (np.sin(2 * np.pi * 220 * t) * 8000).astype("<i2")


def _patch(path, offset, value: bytes):
  with open(path, "r+b") as f:
    f.seek(offset)
    f.write(value)
  return path


def ten_ms(d):
  return _wav(d / "10ms.wav", _tone(0.01))


def one_sample(d):
  return _wav(d / "1sample.wav", _tone(1)[:1])


def lying_rate(d):  # the header's sample-rate field says 1 Hz
  return _patch(_wav(d / "rate.wav", _tone(1)), 24, (1).to_bytes(4, "little"))


def lying_size(d):  # the data chunk claims ten times the samples the file holds
  path = _wav(d / "size.wav", _tone(1))
  return _patch(path, 40, (10 * RATE * 2).to_bytes(4, "little"))


def truncated(d):  # cut in its sample data
  path = _wav(d / "truncated.wav", _tone(2))
  with open(path, "r+b") as f:
    f.truncate(44 + RATE)  # 0.5 s of the announced 2 s
  return path


def truncated_header(d):
  path = _wav(d / "header.wav", _tone(1))
  with open(path, "r+b") as f:
    f.truncate(20)
  return path


def five_minutes(d):
  return _wav(d / "300s.wav", np.zeros(300 * RATE, "<i2"))


def empty_file(d):
  (d / "empty.wav").write_bytes(b"")
  return str(d / "empty.wav")


def not_audio(d):
  (d / "notes.wav").write_text("these are my notes, not audio\n" * 20)
  return str(d / "notes.wav")


def nan_samples(d):
  import soundfile  # pylint: disable=g-import-not-at-top
  audio = np.sin(np.arange(RATE) / 10).astype(np.float32)
  audio[100:200] = np.nan
  soundfile.write(str(d / "nan.wav"), audio, RATE, subtype="FLOAT")
  return str(d / "nan.wav")


def missing(d):
  return str(d / "no_such_file.wav")


def directory(d):
  (d / "a_dir.wav").mkdir()
  return str(d / "a_dir.wav")


BAD = [ten_ms, one_sample, lying_rate, lying_size, truncated, truncated_header, five_minutes,
       empty_file, not_audio, nan_samples, missing, directory]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__ for f in BAD])
def test_bad_audio_is_refused_with_one_line_before_any_model_loads(tmp_path, make):
  path = make(tmp_path)
  texts = tmp_path / "texts.txt"
  texts.write_text("a text\n")
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  rc, err = run_cli(["retrieve", "--model_dir", str(tmp_path / "no_model"), "--audio", path, "--texts", str(texts)])
  assert rc == 2, err[-2000:]
  assert path in user_error_line(err, "retrieve")
  grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
  assert grown_kb < 2 * 1024 * 1024  # peak memory grew by less than 2 GB (nothing big decoded)


@pytest.mark.parametrize("command", ["align", "langid"])
def test_align_and_langid_refuse_too(tmp_path, command):
  path = ten_ms(tmp_path)
  argv = {"align": ["align", "--model_dir", str(tmp_path / "no_model"), path, "a text"],
          "langid": ["langid", "--model_dir", str(tmp_path / "no_model"), path]}[command]
  rc, err = run_cli(argv)
  assert rc == 2, err[-2000:]
  assert "ms long" in user_error_line(err, command)


def test_odd_but_valid_audio_is_converted(tmp_path):
  import soundfile  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import audio  # pylint: disable=g-import-not-at-top
  eight_bit = _wav(tmp_path / "8bit.wav", ((_tone(1) // 256) + 128).astype(np.uint8), width=1)
  stereo = str(tmp_path / "stereo.wav")
  soundfile.write(stereo, np.stack([_tone(1, 44100), _tone(1, 44100)], 1), 44100)
  silence = _wav(tmp_path / "silence.wav", np.zeros(RATE, "<i2"))
  for path in (eight_bit, stereo, silence):
    got = audio.read_user_audio(path)
    assert got.dtype == np.float32 and got.ndim == 1 and abs(got.shape[0] - RATE) <= 2, (path, got.shape)
  # 8-bit and 16-bit renderings of one tone agree to 8-bit precision.
  np.testing.assert_allclose(audio.read_user_audio(eight_bit), _tone(1) / 32768, atol=2 / 256)
  assert not os.path.exists(tmp_path / "no_model")


@pytest.mark.slow
def test_align_after_rotation_deleted_the_source_step(tiny_run, builtin_corpus_dir, tmp_path):
  """A fine-tuned model needs only the structure of its source run's parameters: when rotation has
  deleted the step it started from, another step gives it, and the alignment is unchanged."""
  import shutil  # pylint: disable=g-import-not-at-top
  run = str(tmp_path / "run")
  shutil.copytree(tiny_run, run)
  tuned = str(tmp_path / "ctc")
  rc, err = run_cli(["finetune", "--model_dir", run, "--out", tuned, "--step", "1", "--corpus_dir",
                     builtin_corpus_dir, "--steps", "2", "--freeze", "frozen"])
  assert rc == 0, err[-3000:]
  wav = _wav(tmp_path / "clip.wav", _tone(1.5))
  import contextlib, io  # pylint: disable=g-import-not-at-top,multiple-imports
  outputs = []
  for attempt in range(2):
    if attempt:
      shutil.rmtree(os.path.join(run, "checkpoints", "1"))  # rotation deletes the source step
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
      rc, err = run_cli(["align", "--model_dir", tuned, wav, "a b"])
    assert rc == 0, err[-3000:]
    outputs.append(out.getvalue())
  assert outputs[0] == outputs[1]
