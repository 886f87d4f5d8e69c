"""Multilingual LibriSpeech: `mls_{language}/{train,dev,test}/transcripts.txt` +
`audio/{speaker}/{chapter}/{id}.flac`.

Quirks: ids are `{speaker}_{chapter}_{segment}` and give the audio path; the Opus release
(`mls_polish_opus`, ...) has `.opus` files; `subset="9hr"` / `"1hr"` keeps only the train ids of
the limited-supervision lists (`train/limited_supervision/9hr/handles.txt`,
`1hr/{0..5}/handles.txt`), for the low-resource fine-tuning sets.
"""
import glob
import os
from typing import Iterator

from mslam_jax.data import audio as audio_lib
from mslam_jax.data.corpora import base

NAME = "mls"
DEFAULT_STREAMS = ("speech", "paired")
SUBSETS = ("full", "9hr", "1hr")


def _limited(split_dir: str, subset: str) -> set[str] | None:
  if subset == "full":
    return None
  pattern = {"9hr": "9hr/handles.txt", "1hr": "1hr/*/handles.txt"}[subset]
  ids = set()
  for path in sorted(glob.glob(os.path.join(split_dir, "limited_supervision", pattern))):
    with open(path, encoding="utf-8") as f:
      ids.update(line.strip() for line in f if line.strip())
  return ids


def read(root: str, counter: audio_lib.SkipCounter, languages=None, subset: str = "full") -> Iterator[base.Record]:
  if subset not in SUBSETS:
    raise ValueError(f"MLS subset {subset!r} is not one of {SUBSETS} (--option subset=...)")
  for dirname in sorted(os.listdir(root)):
    if not dirname.startswith("mls_") or not os.path.isdir(os.path.join(root, dirname)):
      continue
    name = dirname[len("mls_"):].removesuffix("_opus")
    lang = base.resolve_language(NAME, name, counter, dirname)
    if lang is None or (languages and lang not in languages):
      continue
    for split_dir_name in ("train", "dev", "test"):
      split_dir = os.path.join(root, dirname, split_dir_name)
      path = os.path.join(split_dir, "transcripts.txt")
      if not os.path.exists(path):
        continue
      keep = _limited(split_dir, subset) if split_dir_name == "train" else None
      for row in base.read_tsv(path, counter, header=False, columns=2):
        utt_id, text = row
        parts = utt_id.split("_")
        if len(parts) != 3:
          counter.skip(base.MALFORMED_ROW, f"{path}:{utt_id}", "id is not speaker_chapter_segment")
          continue
        if keep is not None and utt_id not in keep:
          continue
        stem = os.path.join(split_dir, "audio", parts[0], parts[1], utt_id)
        audio_path = stem + ".flac"
        if not os.path.exists(audio_path) and os.path.exists(stem + ".opus"):
          audio_path = stem + ".opus"
        yield base.Record(corpus=NAME, id=f"mls-{name}-{utt_id}", lang=lang, split=base.split_name(split_dir_name),
                          text=text, audio_path=audio_path, speaker=parts[0], labels={"corpus_lang": name})
