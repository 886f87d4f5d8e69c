"""CTC forced alignment: Viterbi over the blank-interleaved transcript, timestamps, TextGrid, plots.

Given per-frame CTC log-probabilities [T, V] and the transcript's token ids, `viterbi_align` finds
the single most likely CTC path that emits exactly that transcript (the same lattice as the CTC
loss, with max in place of sum). Each transcript character gets the frames its state occupies;
words are runs of characters between spaces. Times are frame indices times the encoder's frame
shift (10 ms log-mel hop x the frontend's subsampling).

CTC emits a character once it has heard it, so a word's first emission comes late, by about a frame
on the demo's models, while its last one ends where the word does. `BoundaryOffsets` are those
biases, measured on utterances with reference word timings (the training split of a corpus that has
them) and subtracted from the words' starts and ends; the alignment evaluator fits them on the
training split and scores the test split with them.
"""
import dataclasses
import json
import logging
import os
import unicodedata
from typing import Sequence

import gin
import numpy as np
from etils import epath

from mslam_jax import storage
from mslam_jax.evaluation import base

OFFSETS_FILE = "alignment_offsets.json"


@dataclasses.dataclass
class Segment:
  """A labelled time span in milliseconds."""
  label: str
  start_ms: float
  end_ms: float

  def to_dict(self) -> dict:
    return {"label": self.label, "start_ms": round(self.start_ms, 1), "end_ms": round(self.end_ms, 1)}


def viterbi_align(log_probs: np.ndarray, targets: Sequence[int], blank_id: int = 4) -> np.ndarray:
  """Most likely CTC path emitting `targets`; returns for each frame the index of its target or -1.

  Args:
    log_probs: [T, V] log-probabilities of the valid frames of one utterance.
    targets: the transcript's token ids (no blanks), length L >= 1.
    blank_id: the CTC blank.
  Returns:
    int array [T]: target index (0..L-1) emitted at that frame, -1 where the path is on a blank.
  Raises:
    ValueError: if T frames cannot hold the transcript (L plus one blank per repeated pair).
  """
  log_probs = np.asarray(log_probs, np.float64)
  targets = np.asarray(targets, np.int64)
  num_frames, num_targets = log_probs.shape[0], len(targets)
  if num_targets == 0:
    raise ValueError("cannot align an empty transcript")
  repeats = int(np.sum(targets[1:] == targets[:-1]))
  if num_frames < num_targets + repeats:
    raise ValueError(f"{num_frames} frames cannot hold {num_targets} targets with {repeats} repeats")
  # States: blank, t0, blank, t1, ..., t(L-1), blank.
  num_states = 2 * num_targets + 1
  labels = np.full([num_states], blank_id, np.int64)
  labels[1::2] = targets
  # A skip from s-2 to s is allowed into a non-blank state whose label differs from s-2's.
  can_skip = np.zeros([num_states], bool)
  can_skip[3::2] = targets[1:] != targets[:-1]
  neg_inf = -np.inf
  score = np.full([num_states], neg_inf)
  score[0] = log_probs[0, labels[0]]
  score[1] = log_probs[0, labels[1]]
  backptr = np.zeros([num_frames, num_states], np.int8)  # 0 stay, 1 from s-1, 2 from s-2
  for t in range(1, num_frames):
    stay = score
    step = np.concatenate([[neg_inf], score[:-1]])
    skip = np.where(can_skip, np.concatenate([[neg_inf, neg_inf], score[:-2]]), neg_inf)
    candidates = np.stack([stay, step, skip])
    choice = candidates.argmax(axis=0)
    backptr[t] = choice
    score = candidates[choice, np.arange(num_states)] + log_probs[t, labels]
  # The path ends on the last target or the trailing blank.
  state = num_states - 1 if score[-1] >= score[-2] else num_states - 2
  if not np.isfinite(score[state]):
    raise ValueError("no CTC path emits the transcript")
  path = np.empty([num_frames], np.int64)
  for t in range(num_frames - 1, -1, -1):
    path[t] = state
    state -= int(backptr[t, state])
  return np.where(path % 2 == 1, path // 2, -1)


def token_segments(frame_targets: np.ndarray, num_targets: int) -> list[tuple[int, int]]:
  """[start_frame, end_frame) of each target index in a Viterbi path."""
  spans = []
  for j in range(num_targets):
    frames = np.flatnonzero(frame_targets == j)
    spans.append((int(frames[0]), int(frames[-1]) + 1))
  return spans


def align_text(log_probs: np.ndarray, text: str, vocab, frame_shift_ms: float,
               blank_id: int = 4) -> tuple[list[Segment], list[Segment]]:
  """Character and word segments of `text` in an utterance's CTC log-probabilities.

  Spaces are aligned like any character (the CTC head was trained on them) but are not reported
  as segments; a word spans from its first character's start to its last character's end.
  """
  chars = list(unicodedata.normalize("NFC", text))
  ids = [_single_id(vocab, c) for c in chars]
  frame_targets = viterbi_align(log_probs, ids, blank_id)
  spans = token_segments(frame_targets, len(ids))
  char_segments, word_segments = [], []
  word_chars: list[tuple[str, int, int]] = []

  def flush():
    if word_chars:
      word_segments.append(Segment("".join(c for c, _, _ in word_chars),
                                   word_chars[0][1] * frame_shift_ms, word_chars[-1][2] * frame_shift_ms))
      word_chars.clear()

  for char, (start, end) in zip(chars, spans):
    if char.isspace():
      flush()
      continue
    char_segments.append(Segment(char, start * frame_shift_ms, end * frame_shift_ms))
    word_chars.append((char, start, end))
  flush()
  return char_segments, word_segments


@dataclasses.dataclass(frozen=True)
class BoundaryOffsets:
  """Milliseconds to add to aligned word starts and ends (the negated median bias of each)."""
  start_ms: float = 0.0
  end_ms: float = 0.0

  @classmethod
  def fit(cls, words: Sequence[Sequence[Segment]], reference_starts_ms: Sequence[Sequence[float]],
          reference_ends_ms: Sequence[Sequence[float]]) -> "BoundaryOffsets":
    """The median signed error of starts and of ends, negated, over utterances whose aligned and
    reference word counts agree (the others are left out). Zero without any such utterance."""
    start_errors, end_errors = [], []
    for segments, starts, ends in zip(words, reference_starts_ms, reference_ends_ms):
      if segments and len(segments) == len(starts) == len(ends):
        start_errors += [s.start_ms - r for s, r in zip(segments, starts)]
        end_errors += [s.end_ms - r for s, r in zip(segments, ends)]
    if not start_errors:
      return cls()
    return cls(-float(np.median(start_errors)), -float(np.median(end_errors)))

  def apply(self, words: Sequence[Segment], duration_ms: float) -> list[Segment]:
    """The words moved by the offsets, kept within the audio (a start never passes its end)."""
    out = []
    for w in words:
      start = min(max(0.0, w.start_ms + self.start_ms), duration_ms)
      end = min(max(start, w.end_ms + self.end_ms), duration_ms)
      out.append(Segment(w.label, start, end))
    return out

  def to_dict(self) -> dict:
    return {"start_ms": round(self.start_ms, 1) + 0.0, "end_ms": round(self.end_ms, 1) + 0.0}  # (no -0.0)

  @classmethod
  def load(cls, path: str) -> "BoundaryOffsets":
    """From an OFFSETS_FILE (what the alignment evaluator wrote)."""
    try:
      record = json.loads(epath.Path(path).read_text())
      return cls(float(record["start_ms"]), float(record["end_ms"]))
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{path} is not a boundary-offsets file ({{\"start_ms\": ..., \"end_ms\": ...}}): {e}") from e


def uniform_word_segments(text: str, duration_ms: float) -> list[Segment]:
  """The baseline a forced aligner must beat: every character gets an equal share of the audio."""
  chars = list(unicodedata.normalize("NFC", text))
  step = duration_ms / max(1, len(chars))
  words, start = [], None
  for i, char in enumerate(chars + [" "]):
    if char.isspace():
      if start is not None:
        words.append(Segment("".join(chars[start:i]), start * step, i * step))
        start = None
    elif start is None:
      start = i
  return words


def _single_id(vocab, char: str) -> int:
  ids = list(vocab.encode(char))
  if len(ids) != 1:
    raise ValueError(f"character {char!r} does not map to exactly one vocabulary id: {ids}")
  return int(ids[0])


def word_boundary_error_ms(predicted: Sequence[Segment], reference_starts_ms: Sequence[float],
                           reference_ends_ms: Sequence[float]) -> float | None:
  """Mean absolute error of word starts and ends (ms); None when the word counts differ."""
  if len(predicted) != len(reference_starts_ms) or len(predicted) != len(reference_ends_ms) or not predicted:
    return None
  starts = np.array([s.start_ms for s in predicted])
  ends = np.array([s.end_ms for s in predicted])
  errors = np.concatenate([np.abs(starts - np.asarray(reference_starts_ms, np.float64)),
                           np.abs(ends - np.asarray(reference_ends_ms, np.float64))])
  return float(errors.mean())


def textgrid_string(tiers: dict[str, Sequence[Segment]], duration_ms: float) -> str:
  """A Praat TextGrid (long text format) with one IntervalTier per entry of `tiers`.

  Praat needs each tier to tile [0, duration]: gaps between segments become empty intervals.
  """
  xmax = duration_ms / 1000.0
  lines = ['File type = "ooTextFile"', 'Object class = "TextGrid"', "", "xmin = 0",
           f"xmax = {xmax:.4f}", "tiers? <exists>", f"size = {len(tiers)}", "item []:"]
  for tier_index, (name, segments) in enumerate(tiers.items(), start=1):
    intervals = _tile(segments, xmax)
    lines += [f"    item [{tier_index}]:", '        class = "IntervalTier"', f'        name = "{name}"',
              "        xmin = 0", f"        xmax = {xmax:.4f}", f"        intervals: size = {len(intervals)}"]
    for k, (start, end, label) in enumerate(intervals, start=1):
      escaped = label.replace('"', '""')
      lines += [f"        intervals [{k}]:", f"            xmin = {start:.4f}", f"            xmax = {end:.4f}",
                f'            text = "{escaped}"']
  return "\n".join(lines) + "\n"


def _tile(segments: Sequence[Segment], xmax: float) -> list[tuple[float, float, str]]:
  out, cursor = [], 0.0
  for seg in sorted(segments, key=lambda s: s.start_ms):
    start, end = max(seg.start_ms / 1000.0, cursor), min(seg.end_ms / 1000.0, xmax)
    if end <= start:
      continue
    if start > cursor:
      out.append((cursor, start, ""))
    out.append((start, end, seg.label))
    cursor = end
  if cursor < xmax:
    out.append((cursor, xmax, ""))
  return out


def write_textgrid(path: str, char_segments: Sequence[Segment], word_segments: Sequence[Segment],
                   duration_ms: float) -> None:
  storage.write_text(path, textgrid_string({"words": word_segments, "chars": char_segments}, duration_ms))


def plot_alignment(path: str, audio: np.ndarray, word_segments: Sequence[Segment],
                   reference: Sequence[Segment] = (), title: str = "", sample_rate: int = 16_000) -> None:
  """PNG: the spectrogram with the aligned word boundaries (and the reference's, dashed)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(max(6.0, len(audio) / sample_rate * 2.5), 3.5))
  ax.specgram(np.asarray(audio, np.float64) + 1e-9, NFFT=400, Fs=sample_rate, noverlap=240, cmap="magma")
  top = sample_rate / 2
  for seg in reference:
    for x in (seg.start_ms, seg.end_ms):
      ax.axvline(x / 1000.0, color="cyan", linestyle="--", linewidth=0.8)
  for seg in word_segments:
    ax.axvline(seg.start_ms / 1000.0, color="white", linewidth=1.0)
    ax.axvline(seg.end_ms / 1000.0, color="white", linewidth=1.0, alpha=0.5)
    ax.text((seg.start_ms + seg.end_ms) / 2000.0, top * 0.92, seg.label, color="white", ha="center",
            va="top", fontsize=8)
  ax.set_xlabel("time (s)")
  ax.set_ylabel("Hz")
  ax.set_title(title or "CTC forced alignment (white: aligned, cyan dashed: reference)")
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=100)
  plt.close(fig)
  logging.info("Wrote alignment plot %s", path)


def frame_shift_ms(num_samples: int, num_encoder_frames: int, hop_ms: float = 10.0,
                   window_ms: float = 25.0, sample_rate: int = 16_000) -> float:
  """The encoder's frame shift: the log-mel hop times the frontend's (integer) subsampling."""
  window, hop = int(sample_rate * window_ms / 1000), int(sample_rate * hop_ms / 1000)
  feature_frames = 1 + (num_samples - window) // hop if num_samples >= window else 0
  factor = max(1, round(feature_frames / max(1, num_encoder_frames)))
  return hop_ms * factor


@dataclasses.dataclass
class Alignment:
  chars: list[Segment]
  words: list[Segment]
  duration_ms: float

  def to_dict(self) -> dict:
    return {"duration_ms": round(self.duration_ms, 1), "words": [w.to_dict() for w in self.words],
            "chars": [c.to_dict() for c in self.chars]}


def align_utterances(tuned, audios: Sequence[np.ndarray], texts: Sequence[str],
                     offsets: BoundaryOffsets | None = None,
                     langs: Sequence[str] | None = None,
                     log_probs: Sequence[np.ndarray] | None = None) -> list[Alignment | None]:
  """Forced alignment of each (audio, transcript) with a fine-tuned CTC model; None where impossible.
  `offsets` move the word boundaries (not the characters'). `langs`: each clip's language code, for
  an encoder with language vectors (fine-tuning passed them too); None: unknown. `log_probs`: the
  clips' CTC log-probabilities where they were already computed (e.g. while transcribing)."""
  out = []
  for audio, text, lp in zip(audios, texts, tuned.log_probs(audios, langs) if log_probs is None else log_probs):
    shift = frame_shift_ms(len(audio), lp.shape[0])
    try:
      chars, words = align_text(lp, text, tuned.vocab, shift)
    except ValueError as e:
      logging.warning("Cannot align %r: %s", text[:40], e)
      out.append(None)
      continue
    duration_ms = len(audio) / 16.0
    out.append(Alignment(chars, offsets.apply(words, duration_ms) if offsets is not None else words, duration_ms))
  return out


@base.register("alignment")
@gin.configurable
class AlignmentEvaluator:
  """Word-boundary error of CTC forced alignment against the synthesizer's word timings.

  The CTC head is the one the "ctc" evaluator fine-tunes (shared per checkpoint, so running both
  trains it once); its FinetuneConfig comes from gin as well. Its boundary biases
  (`BoundaryOffsets`) are fitted on `calibration_per_lang` training utterances a language (0: not
  calibrated) and written to OUT/alignment_offsets.json for `mslam align --offsets`; the test
  split's error is reported with them and without ("_uncalibrated").
  """

  def __init__(self, corpus_dir: str | None = None, langs: Sequence[str] | None = None,
               max_per_lang: int | None = 20, max_train_per_lang: int | None = None, num_plots: int = 2,
               calibration_per_lang: int = 20):
    self.corpus_dir = corpus_dir
    self.langs, self.max_per_lang = langs, max_per_lang
    self.max_train_per_lang, self.num_plots = max_train_per_lang, num_plots
    self.calibration_per_lang = calibration_per_lang

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
    from mslam_jax.evaluation import finetune  # pylint: disable=g-import-not-at-top
    from mslam_jax.evaluation import finetune_job  # pylint: disable=g-import-not-at-top
    corpus_dir, out_dir = ctx.corpus(self.corpus_dir, type(self).__name__), ctx.out_dir
    tuned = finetune_job.checkpoint_ctc_head(ctx, corpus_dir, self.langs, self.max_train_per_lang,
                                             finetune.FinetuneConfig())
    langs = self.langs or eval_data.training_languages(corpus_dir)
    timed = lambda split, limit: [u for u in eval_data.read_utterances(corpus_dir, "paired", split, langs, limit)  # pylint: disable=unnecessary-lambda-assignment
                                  if len(u.audio) and u.text.strip() and len(u.words)]
    utts = timed("test", self.max_per_lang)
    if not utts:
      raise ValueError("no paired test utterances with word timings to align")
    offsets, calibration = BoundaryOffsets(), []
    if self.calibration_per_lang:
      train = timed("train", self.calibration_per_lang)
      calibration = [(u, al) for u, al in zip(train, align_utterances(tuned, [u.audio for u in train],
                                                                      [u.text for u in train],
                                                                      langs=[u.lang for u in train]))
                     if al is not None and len(al.words) == len(u.word_starts_ms)]
      offsets = BoundaryOffsets.fit([al.words for _, al in calibration], [u.word_starts_ms for u, _ in calibration],
                                    [u.word_ends_ms for u, _ in calibration])
      if out_dir:
        storage.write_text(os.path.join(out_dir, OFFSETS_FILE), json.dumps(offsets.to_dict()) + "\n")
    alignments = align_utterances(tuned, [u.audio for u in utts], [u.text for u in utts],
                                  langs=[u.lang for u in utts])
    errors, uncalibrated, baseline, per_lang, skipped, plotted = [], [], [], {}, 0, 0
    for utt, al in zip(utts, alignments):
      raw = None if al is None else word_boundary_error_ms(al.words, utt.word_starts_ms, utt.word_ends_ms)
      if raw is None:
        skipped += 1
        continue
      al = Alignment(al.chars, offsets.apply(al.words, al.duration_ms), al.duration_ms)
      error = word_boundary_error_ms(al.words, utt.word_starts_ms, utt.word_ends_ms)
      errors.append(error)
      uncalibrated.append(raw)
      baseline.append(word_boundary_error_ms(uniform_word_segments(utt.text, al.duration_ms),
                                             utt.word_starts_ms, utt.word_ends_ms))
      per_lang.setdefault(utt.lang, []).append(error)
      if out_dir and plotted < self.num_plots:
        reference = [Segment(w, s, e) for w, s, e in zip(utt.words, utt.word_starts_ms, utt.word_ends_ms)]
        stem = os.path.join(out_dir, f"alignment_{plotted}_{utt.lang}")
        plot_alignment(stem + ".png", utt.audio, al.words, reference,
                       title=f"{utt.lang}: {utt.text[:60]} (error {error:.0f} ms)")
        write_textgrid(stem + ".TextGrid", al.chars, al.words, al.duration_ms)
        plotted += 1
    if skipped:
      logging.warning("Alignment: skipped %d of %d utterances (no CTC path or word counts differ)", skipped, len(utts))
    metrics = {"alignment_word_boundary_error_ms": float(np.mean(errors)) if errors else float("nan"),
               "alignment_word_boundary_error_ms_uncalibrated": float(np.mean(uncalibrated)) if uncalibrated
                                                                 else float("nan"),
               "alignment_offset_start_ms": offsets.start_ms, "alignment_offset_end_ms": offsets.end_ms,
               "alignment_num_calibration": float(len(calibration)),
               # The same utterances aligned by spreading characters evenly over the audio.
               "alignment_word_boundary_error_ms_uniform_baseline":
                   float(np.mean([b for b in baseline if b is not None])) if any(b is not None for b in baseline)
                   else float("nan"),
               "alignment_num_scored": float(len(errors)), "alignment_skipped": float(skipped)}
    metrics.update({f"alignment_word_boundary_error_ms/{lang}": float(np.mean(v)) for lang, v in per_lang.items()})
    return metrics
