"""CoVoST 2: `covost_v2.{src}_{tgt}.tsv` (path, sentence, translation, client_id, split) joined to
the Common Voice clips of the source locale (`{cv_root}/{src}/clips/`, `cv_root` defaults to the
root).

Quirks: the tsv escapes with backslashes and quotes nothing (QUOTE_NONE, escapechar `\\`); split
values `train` and `train_covost` are both training data; source codes are Common Voice locales
(`zh-CN`, `sv-SE`). Each record is a paired clip whose labels carry the translation and its target
language (for speech translation downstream); the transcript is the Common Voice sentence.
"""
import csv
import os
import re
from typing import Iterator

from mslam_jax.data import audio as audio_lib
from mslam_jax.data.corpora import base
from mslam_jax.data.corpora import common_voice

NAME = "covost2"
DEFAULT_STREAMS = ("paired",)
_FILE = re.compile(r"^covost_v2\.(?P<src>[A-Za-z-]+)_(?P<tgt>[A-Za-z-]+)\.tsv$")
_SPLITS = {"train": "train", "train_covost": "train", "dev": "validation", "test": "test"}


def read(root: str, counter: audio_lib.SkipCounter, languages=None, cv_root: str | None = None) -> Iterator[base.Record]:
  cv_root = cv_root or root
  for name in sorted(os.listdir(root)):
    m = _FILE.match(name)
    if not m:
      continue
    src, tgt = m.group("src"), m.group("tgt")
    lang = base.resolve_language(NAME, src, counter, name)
    if lang is None or (languages and lang not in languages):
      continue
    path = os.path.join(root, name)
    with open(path, encoding="utf-8", newline="") as f:
      reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE, escapechar="\\")
      header = next(reader)
      for lineno, row in enumerate(reader, start=2):
        if len(row) != len(header):
          counter.skip(base.MALFORMED_ROW, f"{path}:{lineno}", f"{len(row)} fields, header has {len(header)}")
          continue
        r = dict(zip(header, row))
        split = _SPLITS.get(r.get("split", ""))
        if split is None:
          counter.skip(base.MALFORMED_ROW, f"{path}:{lineno}", f"unknown split {r.get('split')!r}")
          continue
        clip = r["path"]
        yield base.Record(
            corpus=NAME, id=f"covost-{src}-{tgt}-{os.path.splitext(clip)[0]}", lang=lang, split=split,
            text=r.get("sentence", ""), audio_path=common_voice.clip_path(os.path.join(cv_root, src, "clips"), clip),
            speaker=r.get("client_id", ""),
            labels={"corpus_lang": src, "translation": r.get("translation", ""), "target_lang": tgt})
