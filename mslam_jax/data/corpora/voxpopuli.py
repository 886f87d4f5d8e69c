"""VoxPopuli: unlabeled European Parliament sessions and the transcribed ASR subset.

Unlabeled: `raw_audios/{lang}/{year}/{event_id}.ogg` sessions, cut by the segments of
`unlabelled_data/unlabelled_v2.tsv.gz` (or `annotations/` / the root; columns event_id, segment_no,
start, end; the language is the event id's suffix); a session is decoded per segment (seek), and a
segment longer than the clip limit is cut into clips, never dropped. Where the segments were already
cut (`unlabelled_data/{lang}/{year}/{event_id}_{segment_no}.ogg`) those files are read instead.
Transcribed: `transcribed_data/{lang}/asr_{train,dev,test}.tsv` (id, raw_text, normalized_text,
speaker_id, split, gender, ...) + `transcribed_data/{lang}/{year}/{id}.ogg`, year = id[:4]; the
raw text is kept, the normalized one when raw is empty.
"""
import csv
import gzip
import os
from typing import Iterator

from mslam_jax.data import audio as audio_lib
from mslam_jax.data.corpora import base

NAME = "voxpopuli"
DEFAULT_STREAMS = ("speech", "paired")
SEGMENT_FILES = ("unlabelled_data/unlabelled_v2.tsv.gz", "annotations/unlabelled_v2.tsv.gz", "unlabelled_v2.tsv.gz")


def _segments(root: str, counter: audio_lib.SkipCounter) -> Iterator[tuple[str, str, float, float]]:
  for rel in SEGMENT_FILES:
    path = os.path.join(root, rel)
    if os.path.exists(path):
      break
  else:
    return
  with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
    for lineno, row in enumerate(csv.DictReader(f, delimiter="\t"), start=2):
      try:
        yield row["event_id"], row["segment_no"], float(row["start"]), float(row["end"])
      except (KeyError, TypeError, ValueError):
        counter.skip(base.MALFORMED_ROW, f"{path}:{lineno}", f"not event_id, segment_no, start, end: {row}")


def read(root: str, counter: audio_lib.SkipCounter, languages=None) -> Iterator[base.Record]:
  langs: dict[str, str | None] = {}

  def lang_of(code, where):
    if code not in langs:
      langs[code] = base.resolve_language(NAME, code, counter, where)
    return langs[code]

  for event_id, seg, start, end in _segments(root, counter):
    code, year = event_id.rsplit("_", 1)[-1], event_id[:4]
    lang = lang_of(code, event_id)
    if lang is None or (languages and lang not in languages):
      continue
    cut = os.path.join(root, "unlabelled_data", code, year, f"{event_id}_{seg}.ogg")
    record = base.Record(corpus=NAME, id=f"vp-{event_id}-{int(seg):04d}" if seg.isdigit() else f"vp-{event_id}-{seg}",
                         lang=lang, split="train", labels={"corpus_lang": code}, duration_s=end - start)
    if os.path.exists(cut):
      record.audio_path = cut
    else:
      record.audio_path = os.path.join(root, "raw_audios", code, year, f"{event_id}.ogg")
      record.start_s, record.end_s = start, end
    yield record

  transcribed = os.path.join(root, "transcribed_data")
  if not os.path.isdir(transcribed):
    return
  for code in sorted(os.listdir(transcribed)):
    lang_dir = os.path.join(transcribed, code)
    if not os.path.isdir(lang_dir):
      continue
    lang = lang_of(code, lang_dir)
    if lang is None or (languages and lang not in languages):
      continue
    for split_file in ("train", "dev", "test"):
      path = os.path.join(lang_dir, f"asr_{split_file}.tsv")
      if not os.path.exists(path):
        continue
      for row in base.read_tsv(path, counter):
        utt = row["id"]
        yield base.Record(corpus=NAME, id=f"vp-asr-{code}-{utt}", lang=lang, split=base.split_name(split_file),
                          text=row.get("raw_text") or row.get("normalized_text", ""),
                          audio_path=os.path.join(lang_dir, utt[:4], f"{utt}.ogg"),
                          speaker=row.get("speaker_id", ""), labels={"corpus_lang": code})
