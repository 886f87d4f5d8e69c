"""Common Voice: `{locale}/{train,dev,test,validated}.tsv` + `{locale}/clips/*.mp3` (48 kHz).

Quirks: columns are matched by header name (old releases: client_id, path, sentence, up_votes,
...; new ones add sentence_id, sentence_domain, variant), rows are read with QUOTE_NONE (sentences
hold quotes), a malformed row is counted and skipped; durations come from `clip_durations.tsv`
(ms) without decoding; old releases name clips without the `.mp3` extension. The train split is
`validated.tsv` minus the dev and test clips (as pre-training uses it) when `validated.tsv` is
there, `train.tsv` otherwise. Locales like `zh-CN`, `sv-SE`, `rm-sursilv` map through the
inventory (zh-HK is Cantonese).
"""
import os
from typing import Iterator

from mslam_jax.data import audio as audio_lib
from mslam_jax.data.corpora import base

NAME = "common_voice"
DEFAULT_STREAMS = ("speech", "paired")


def clip_path(clips_dir: str, name: str) -> str:
  path = os.path.join(clips_dir, name)
  if not os.path.splitext(name)[1] and not os.path.exists(path):
    return path + ".mp3"
  return path


def durations(locale_dir: str, counter: audio_lib.SkipCounter) -> dict[str, float]:
  path = os.path.join(locale_dir, "clip_durations.tsv")
  out = {}
  if os.path.exists(path):
    for row in base.read_tsv(path, counter):
      try:
        out[row["clip"]] = float(row["duration[ms]"]) / 1000.0
      except (KeyError, ValueError):
        counter.skip(base.MALFORMED_ROW, path, f"bad duration row {row}")
  return out


def read_locale(root: str, locale: str, lang: str, counter: audio_lib.SkipCounter, corpus: str = NAME,
                splits=("train", "dev", "test")) -> dict[str, list[dict]]:
  """{split: rows} of one locale directory; train = validated minus dev/test when validated exists."""
  locale_dir = os.path.join(root, locale)
  rows = {}
  for split_file in ("train", "dev", "test", "validated"):
    path = os.path.join(locale_dir, f"{split_file}.tsv")
    if os.path.exists(path):
      rows[split_file] = [r for r in base.read_tsv(path, counter) if r.get("path")]
  if "validated" in rows:
    held = {r["path"] for s in ("dev", "test") for r in rows.get(s, ())}
    seen = set()
    train = []
    for r in rows.get("train", []) + rows["validated"]:
      if r["path"] not in held and r["path"] not in seen:
        seen.add(r["path"])
        train.append(r)
    rows["train"] = train
  return {s: rows[s] for s in splits if s in rows}


def read(root: str, counter: audio_lib.SkipCounter, languages=None) -> Iterator[base.Record]:
  for locale in sorted(os.listdir(root)):
    locale_dir = os.path.join(root, locale)
    if not os.path.isdir(os.path.join(locale_dir, "clips")):
      continue
    lang = base.resolve_language(NAME, locale, counter, locale_dir)
    if lang is None or (languages and lang not in languages):
      continue
    known = durations(locale_dir, counter)
    for split_file, rows in read_locale(root, locale, lang, counter).items():
      for row in rows:
        name = row["path"]
        yield base.Record(
            corpus=NAME, id=f"cv-{locale}-{os.path.splitext(name)[0]}", lang=lang, split=base.split_name(split_file),
            text=row.get("sentence", ""), audio_path=clip_path(os.path.join(locale_dir, "clips"), name),
            speaker=row.get("client_id", ""), duration_s=known.get(name),
            labels={"corpus_lang": locale})
