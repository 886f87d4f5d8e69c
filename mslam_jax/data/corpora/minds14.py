"""MINDS-14 (e-banking intents): `text/{locale}.csv` (filepath, text_asr, text_translated_en?,
intent) + `audio/{locale}/{intent}/*.wav` at 8 kHz.

Quirks: the csv is comma-separated with a header and quoted fields; paths in it are relative to
`audio/`; locales are `en-US`, `en-GB`, `en-AU`, `fr-FR`, `zh-CN`, ... (the language part maps
through the inventory); the release has no splits, so each clip's split follows a stable hash of its
path (80 / 10 / 10). Labels carry the intent and the locale.
"""
import csv
import hashlib
import os
from typing import Iterator

from mslam_jax.data import audio as audio_lib
from mslam_jax.data.corpora import base

NAME = "minds14"
DEFAULT_STREAMS = ("paired",)


def stable_split(key: str) -> str:
  bucket = int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) % 10
  return "validation" if bucket == 8 else "test" if bucket == 9 else "train"


def read(root: str, counter: audio_lib.SkipCounter, languages=None) -> Iterator[base.Record]:
  text_dir = os.path.join(root, "text")
  for name in sorted(os.listdir(text_dir)):
    if not name.endswith(".csv"):
      continue
    locale = name[:-4]
    lang = base.resolve_language(NAME, locale, counter, name)
    if lang is None or (languages and lang not in languages):
      continue
    path = os.path.join(text_dir, name)
    with open(path, encoding="utf-8", newline="") as f:
      reader = csv.reader(f, skipinitialspace=True)
      next(reader, None)
      for lineno, row in enumerate(reader, start=2):
        if len(row) not in (3, 4):
          counter.skip(base.MALFORMED_ROW, f"{path}:{lineno}", f"{len(row)} fields")
          continue
        file_path, text, intent = row[0], row[1], row[-1]
        yield base.Record(
            corpus=NAME, id=f"minds14-{locale}-{os.path.splitext(os.path.basename(file_path))[0]}", lang=lang,
            split=stable_split(file_path), text=text,
            audio_path=os.path.join(root, "audio", *file_path.split("/")),
            labels={"corpus_lang": locale, "intent": intent})
