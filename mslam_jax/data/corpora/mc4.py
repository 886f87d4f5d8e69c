"""mC4 text: the raw `c4-{lang}.tfrecord-{i}-of-{n}.json.gz` files (and `c4-{lang}-validation...`),
or a TFDS `c4/multilingual` data_dir read with seqio.TfdsDataSource.

Quirks: codes are mC4's (`iw` Hebrew, `no`, `zh`, and romanized variants `ru-Latn`, `hi-Latn`, ...
that map to the same language, kept in the record's labels); `und` (no language) is skipped and
counted as unknown_language. A document is split at its line breaks (mC4 keeps paragraphs as
lines); each paragraph is one text item, and ones shorter than `min_chars` are dropped.
"""
import gzip
import json
import os
import re
from typing import Iterator

from mslam_jax.data import audio as audio_lib
from mslam_jax.data.corpora import base

NAME = "mc4"
DEFAULT_STREAMS = ("text",)
_FILE = re.compile(r"^c4-(?P<lang>[A-Za-z]+(?:-Latn)?)(?P<val>-validation)?\.tfrecord-(?P<i>\d+)-of-\d+\.json(?:\.gz)?$")
TFDS_NAME = "c4/multilingual:3.1.0"


def _paragraphs(doc_id: str, text: str, lang: str, split: str, code: str, min_chars: int) -> Iterator[base.Record]:
  for k, line in enumerate(text.split("\n")):
    line = line.strip()
    if len(line) >= min_chars:
      yield base.Record(corpus=NAME, id=f"{doc_id}-p{k:04d}", lang=lang, split=split, text=line,
                        labels={"corpus_lang": code})


def read(root: str, counter: audio_lib.SkipCounter, languages=None, min_chars: int | str = 20,
         tfds_data_dir: str | None = None, tfds_languages: str | None = None) -> Iterator[base.Record]:
  min_chars = int(min_chars)
  if tfds_data_dir:
    yield from _read_tfds(tfds_data_dir, counter, languages, min_chars, tfds_languages)
    return
  files = []
  for dirpath, _, names in os.walk(root):
    files += [os.path.join(dirpath, n) for n in names if _FILE.match(n)]
  langs = {}
  for path in sorted(files):
    m = _FILE.match(os.path.basename(path))
    code = m.group("lang")
    if code not in langs:
      langs[code] = base.resolve_language(NAME, code, counter, path)
    lang = langs[code]
    if lang is None or (languages and lang not in languages):
      continue
    split = "validation" if m.group("val") else "train"
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
      for lineno, line in enumerate(f):
        doc_id = f"mc4-{code}-{split}-{int(m.group('i')):05d}-{lineno:07d}"
        try:
          text = json.loads(line)["text"]
        except (ValueError, KeyError, TypeError) as e:
          counter.skip(base.MALFORMED_ROW, doc_id, f"not a JSON object with text: {e}")
          continue
        yield from _paragraphs(doc_id, text, lang, split, code, min_chars)


def _read_tfds(data_dir: str, counter, languages, min_chars: int, codes: str | None) -> Iterator[base.Record]:
  """The TFDS build of mC4 (splits `{lang}` and `{lang}-validation`) via seqio."""
  import seqio  # pylint: disable=g-import-not-at-top
  if not codes:
    raise ValueError("reading mC4 from TFDS needs --option tfds_languages=CODE,CODE (mC4 codes)")
  for code in codes.split(","):
    lang = base.resolve_language(NAME, code, counter, data_dir)
    if lang is None or (languages and lang not in languages):
      continue
    source = seqio.TfdsDataSource(TFDS_NAME, tfds_data_dir=data_dir,
                                  splits={"train": code, "validation": f"{code}-validation"})
    for split in ("train", "validation"):
      for i, ex in enumerate(source.get_dataset(split=split, shuffle=False).as_numpy_iterator()):
        yield from _paragraphs(f"mc4-{code}-{split}-tfds-{i:09d}", ex["text"].decode("utf-8"), lang, split,
                               code, min_chars)
