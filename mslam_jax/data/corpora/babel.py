"""IARPA BABEL: `BABEL_{OP1,OP2,OP3,BP}_{code}/{conversational,scripted}/{training,dev,eval}/`
`audio/*.sph` + `transcription/*.txt`.

Quirks: audio is NIST SPHERE at 8 kHz, 16-bit PCM or mu-law (resampled to 16 kHz here); a
transcription alternates `[seconds]` time marks and the text spoken until the next mark, and each
such turn becomes one clip cut from the recording by time. The language is the 3-digit code of the
package directory (101 Cantonese ... 404 Georgian; the inventory maps it).

Transcript rule (documented here, applied by `clean_transcript`): tags in angle brackets
(`<no-speech>`, `<hes>`, `<breath>`, `<laugh>`, `<foreign>`, ...) and the unintelligible mark `(())`
are removed; `((word))` (uncertain) keeps the word; `*word*` (misspelled) keeps the word; the
truncation mark `~` and partial-word hyphens at a word's edge are removed. A turn with nothing left
(silence, noise, only hesitations) is skipped and counted as `markup_only_text`.
"""
import os
import re
from typing import Iterator

from mslam_jax.data import audio as audio_lib
from mslam_jax.data.corpora import base

NAME = "babel"
DEFAULT_STREAMS = ("speech", "paired")
_PACKAGE = re.compile(r"BABEL_(?:OP\d|BP)_(\d{3})")
_TIME = re.compile(r"^\[(\d+(?:\.\d+)?)\]$")
_TAG = re.compile(r"<[^<>]*>")
_UNINTELLIGIBLE = re.compile(r"\(\(\s*\)\)")
_UNCERTAIN = re.compile(r"\(\(\s*([^()]*?)\s*\)\)")
_STARRED = re.compile(r"\*([^*\s]+)\*")
SPLIT_DIRS = {"training": "train", "dev": "validation", "eval": "test"}


def clean_transcript(text: str) -> str:
  text = _TAG.sub(" ", text)
  text = _UNINTELLIGIBLE.sub(" ", text)
  text = _UNCERTAIN.sub(r"\1", text)
  text = _STARRED.sub(r"\1", text)
  words = [w.strip("~").strip("-") for w in text.replace("~", " ").split()]
  return " ".join(w for w in words if w)


def turns(path: str, counter: audio_lib.SkipCounter) -> Iterator[tuple[float, float | None, str]]:
  """(start, end, raw text) of each turn of a transcription file."""
  times, texts = [], []
  with open(path, encoding="utf-8") as f:
    for line in f:
      line = line.strip()
      match = _TIME.match(line)
      if match:
        times.append(float(match.group(1)))
        texts.append([])
      elif line and texts:
        texts[-1].append(line)
      elif line:
        counter.skip(base.MALFORMED_ROW, path, f"text before the first time mark: {line[:40]!r}")
  for i, (start, lines) in enumerate(zip(times, texts)):
    end = times[i + 1] if i + 1 < len(times) else None
    if lines and end is not None and end > start:
      yield start, end, " ".join(lines)


def read(root: str, counter: audio_lib.SkipCounter, languages=None) -> Iterator[base.Record]:
  packages = [root] if _PACKAGE.search(os.path.basename(os.path.normpath(root))) else [
      os.path.join(root, d) for d in sorted(os.listdir(root)) if _PACKAGE.search(d)]
  for package in packages:
    code = _PACKAGE.search(os.path.basename(os.path.normpath(package))).group(1)
    lang = base.resolve_language(NAME, code, counter, package)
    if lang is None or (languages and lang not in languages):
      continue
    for kind in ("conversational", "scripted"):
      for split_dir, split in SPLIT_DIRS.items():
        tdir = os.path.join(package, kind, split_dir, "transcription")
        if not os.path.isdir(tdir):
          continue
        for name in sorted(os.listdir(tdir)):
          if not name.endswith(".txt"):
            continue
          stem = name[:-4]
          audio_path = os.path.join(package, kind, split_dir, "audio", stem + ".sph")
          for start, end, raw in turns(os.path.join(tdir, name), counter):
            item_id = f"babel-{code}-{stem}-{int(round(start * 1000)):08d}"
            text = clean_transcript(raw)
            if not text:
              counter.skip(base.MARKUP_ONLY_TEXT, item_id, f"nothing but markup: {raw[:40]!r}")
              continue
            yield base.Record(corpus=NAME, id=item_id, lang=lang, split=split, text=text, audio_path=audio_path,
                              start_s=start, end_s=end, duration_s=end - start, speaker=stem,
                              labels={"corpus_lang": code})
