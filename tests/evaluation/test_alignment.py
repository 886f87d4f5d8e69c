"""CTC forced alignment: Viterbi recovers a planted path; timestamps, TextGrid, boundary error, PNG."""
import json
import re

import numpy as np
import pytest

from mslam_jax.evaluation import alignment

BLANK = 4


class _CharVocab:
  """Characters of 'abc ' map to ids 5..8."""
  chars = "abc "

  def encode(self, s):
    return [5 + self.chars.index(c) for c in s]


def _peaked(path, vocab_size=9, peak=0.9):
  rows = np.full([len(path), vocab_size], (1 - peak) / (vocab_size - 1))
  rows[np.arange(len(path)), path] = peak
  return np.log(rows)


def test_viterbi_recovers_planted_path():
  targets = [5, 6, 6, 7]
  # frame -> emitted token; the repeated 6 6 needs a blank between.
  path = [BLANK, 5, 5, 6, BLANK, 6, 6, 7, BLANK, BLANK]
  expected = [-1, 0, 0, 1, -1, 2, 2, 3, -1, -1]
  np.testing.assert_array_equal(alignment.viterbi_align(_peaked(path), targets, BLANK), expected)


def test_viterbi_follows_the_transcript_not_the_argmax():
  # The frames favour 7 where the transcript says 6: alignment must still emit 5 then 6.
  path = [5, 5, 7, 7]
  frame_targets = alignment.viterbi_align(_peaked(path, peak=0.6), [5, 6], BLANK)
  assert list(frame_targets[:1]) == [0]
  assert set(frame_targets.tolist()) <= {-1, 0, 1}
  assert 1 in frame_targets.tolist()


def test_viterbi_rejects_too_few_frames():
  with pytest.raises(ValueError, match="cannot hold"):
    alignment.viterbi_align(_peaked([5, 6]), [5, 5], BLANK)  # needs 3 frames (a blank between)


def test_align_text_word_timestamps_and_error():
  # "ab c": a at frames 1-2, b at 3, space at 5, c at 7-8; 40 ms frames.
  path = [BLANK, 5, 5, 6, BLANK, 8, BLANK, 7, 7, BLANK]
  chars, words = alignment.align_text(_peaked(path), "ab c", _CharVocab(), frame_shift_ms=40.0, blank_id=BLANK)
  assert [(s.label, s.start_ms, s.end_ms) for s in chars] == [("a", 40, 120), ("b", 120, 160), ("c", 280, 360)]
  assert [(s.label, s.start_ms, s.end_ms) for s in words] == [("ab", 40, 160), ("c", 280, 360)]
  error = alignment.word_boundary_error_ms(words, [50, 300], [150, 360])
  assert error == pytest.approx((10 + 20 + 10 + 0) / 4)
  assert alignment.word_boundary_error_ms(words, [50], [150]) is None


class _RecordingHead:
  """A fine-tuned head's stand-in: the same planted log-probabilities for every clip; it keeps the
  languages it is asked for."""
  vocab = _CharVocab()

  def __init__(self):
    self.langs = []

  def log_probs(self, audios, langs=None):
    self.langs.append(langs)
    return [_peaked([BLANK, 5, 5, 6, BLANK, 8, BLANK, 7, 7, BLANK]) for _ in audios]


def test_align_utterances_gives_the_head_each_clips_language():
  # A head fine-tuned with language vectors was trained with each clip's language: alignment passes it.
  head, audio = _RecordingHead(), np.zeros(3200, np.float32)
  aligned = alignment.align_utterances(head, [audio, audio], ["ab c", "ab c"], langs=["deu", "fra"])
  assert head.langs == [["deu", "fra"]] and [w.label for w in aligned[1].words] == ["ab", "c"]
  alignment.align_utterances(head, [audio], ["ab c"])
  assert head.langs[-1] is None  # unknown: the head runs without language vectors
  # Log-probabilities computed already (e.g. while transcribing) are aligned as they are: no second pass.
  calls = len(head.langs)
  given = alignment.align_utterances(head, [audio], ["ab c"], log_probs=head.log_probs([audio]))
  assert len(head.langs) == calls + 1 and [w.label for w in given[0].words] == ["ab", "c"]


def test_boundary_offsets_remove_the_median_bias_of_starts_and_ends(tmp_path):
  # Two training utterances whose aligned starts come a frame (40 ms) late and whose ends are on
  # time; a third with a different word count is left out of the fit.
  seg = alignment.Segment
  words = [[seg("ab", 80, 160), seg("c", 320, 360)], [seg("d", 40, 120)], [seg("e", 0, 400)]]
  offsets = alignment.BoundaryOffsets.fit(words, [[40, 280], [0], [0, 200]], [[160, 360], [130], [200, 400]])
  assert offsets == alignment.BoundaryOffsets(start_ms=-40.0, end_ms=0.0)
  test = [seg("ab", 70, 160), seg("c", 290, 360)]
  before = alignment.word_boundary_error_ms(test, [30, 250], [160, 360])
  after = alignment.word_boundary_error_ms(offsets.apply(test, 400.0), [30, 250], [160, 360])
  assert (before, after) == (20.0, 0.0)
  # Moved words stay within the audio, and a start never passes its end.
  assert offsets.apply([seg("x", 20, 30)], 400.0) == [seg("x", 0.0, 30)]
  assert alignment.BoundaryOffsets(10.0, -50.0).apply([seg("x", 20, 40)], 400.0) == [seg("x", 30.0, 30.0)]
  assert alignment.BoundaryOffsets.fit([], [], []) == alignment.BoundaryOffsets()
  # The file the evaluator writes, read back; a wrong file is named.
  path = tmp_path / alignment.OFFSETS_FILE
  path.write_text(json.dumps(offsets.to_dict()))
  assert alignment.BoundaryOffsets.load(str(path)) == offsets
  path.write_text("{}")
  with pytest.raises(ValueError, match="not a boundary-offsets file"):
    alignment.BoundaryOffsets.load(str(path))


def _parse_textgrid(text):
  tiers = []
  for block in re.split(r"item \[\d+\]:", text)[1:]:
    name = re.search(r'name = "(.*)"', block).group(1)
    size = int(re.search(r"intervals: size = (\d+)", block).group(1))
    intervals = re.findall(r'xmin = ([\d.]+)\s+xmax = ([\d.]+)\s+text = "(.*)"', block)
    tiers.append((name, size, [(float(a), float(b), t) for a, b, t in intervals]))
  return tiers


def test_textgrid_tiles_each_tier(tmp_path):
  words = [alignment.Segment("ab", 40, 160), alignment.Segment("c", 280, 360)]
  chars = [alignment.Segment("a", 40, 120), alignment.Segment("b", 120, 160), alignment.Segment("c", 280, 360)]
  path = tmp_path / "out.TextGrid"
  alignment.write_textgrid(str(path), chars, words, duration_ms=400)
  text = path.read_text()
  assert text.startswith('File type = "ooTextFile"\nObject class = "TextGrid"')
  assert "size = 2" in text
  tiers = _parse_textgrid(text)
  assert [t[0] for t in tiers] == ["words", "chars"]
  for _, size, intervals in tiers:
    assert size == len(intervals)
    assert intervals[0][0] == 0 and intervals[-1][1] == pytest.approx(0.4)
    for (_, end, _), (start, _, _) in zip(intervals, intervals[1:]):
      assert start == pytest.approx(end)  # contiguous, as Praat requires
  assert [t for _, _, t in tiers[0][2] if t] == ["ab", "c"]


def test_plot_alignment_writes_png(tmp_path):
  audio = np.random.default_rng(0).normal(size=8000).astype(np.float32) * 0.1
  path = tmp_path / "align.png"
  alignment.plot_alignment(str(path), audio, [alignment.Segment("ab", 40, 160)],
                           reference=[alignment.Segment("ab", 50, 150)])
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_uniform_baseline_segments():
  words = alignment.uniform_word_segments("ab cd", 500.0)  # 5 characters of 100 ms
  assert [(w.label, w.start_ms, w.end_ms) for w in words] == [("ab", 0, 200), ("cd", 300, 500)]
