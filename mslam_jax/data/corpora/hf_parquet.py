"""Hugging Face parquet shards of any of these corpora (`datasets` exports, the Hub's
`refs/convert/parquet`): `**/{split}-00000-of-00010.parquet` or `**/{split}/*.parquet`.

Quirks: the audio column is a struct of encoded `bytes` (and a `path`), decoded here with
soundfile; the text column differs per corpus (`sentence` Common Voice, `raw_transcription` /
`transcription` FLEURS, `transcript` MLS, `raw_text` / `normalized_text` VoxPopuli, `text`) and is
found by name unless `text_column` is given; the language is a column (`locale`, `language`,
`lang_id`) in the codes of `codes_from` (a corpus of the inventory, default common_voice) or fixed by
`language`. Only the row's position is listed; a worker reads the row group when it decodes.
"""
import os
import re
from typing import Iterator

from mslam_jax.data import audio as audio_lib
from mslam_jax.data.corpora import base

NAME = "hf_parquet"
DEFAULT_STREAMS = ("speech", "paired")
TEXT_COLUMNS = ("raw_transcription", "sentence", "transcript", "raw_text", "normalized_text", "transcription", "text")
LANG_COLUMNS = ("locale", "language", "lang")
_SPLIT = re.compile(r"(?:^|[-_/])(train|dev|validation|test)(?:[-_./]|$)")


def _split_of(rel: str) -> str | None:
  found = _SPLIT.findall(rel.lower())
  return base.split_name(found[-1]) if found else None


def read(root: str, counter: audio_lib.SkipCounter, languages=None, language: str | None = None,
         codes_from: str = "common_voice", text_column: str | None = None) -> Iterator[base.Record]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  files = sorted(os.path.relpath(os.path.join(d, n), root) for d, _, names in os.walk(root)
                 for n in names if n.endswith(".parquet"))
  fixed = base.resolve_language(codes_from, language, counter, root) if language else None
  if language and fixed is None:
    return
  resolved = {}
  for rel in files:
    path = os.path.join(root, rel)
    split = _split_of(rel)
    if split is None:
      counter.skip(base.MALFORMED_ROW, rel, "no train/dev/validation/test in the file name")
      continue
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    tcol = text_column or next((c for c in TEXT_COLUMNS if c in names), None)
    lcol = next((c for c in LANG_COLUMNS if c in names), None)
    if "audio" not in names or (fixed is None and lcol is None):
      counter.skip(base.MALFORMED_ROW, rel, f"needs an audio column and a language column or --option "
                   f"language=CODE (columns: {names})")
      continue
    columns = [c for c in (tcol, lcol) if c]
    for g in range(pf.num_row_groups):
      table = pf.read_row_group(g, columns=columns).to_pydict()
      for i in range(pf.metadata.row_group(g).num_rows):
        lang = fixed
        if fixed is None:
          code = str(table[lcol][i])
          if code not in resolved:
            resolved[code] = base.resolve_language(codes_from, code, counter, rel)
          lang = resolved[code]
        if lang is None or (languages and lang not in languages):
          continue
        yield base.Record(corpus=NAME, id=f"hf-{os.path.splitext(rel)[0].replace(os.sep, '-')}-{g:04d}-{i:06d}",
                          lang=lang, split=split, text=(table[tcol][i] or "") if tcol else "",
                          audio_path=path, labels={"parquet_row": f"{g}:{i}"})
