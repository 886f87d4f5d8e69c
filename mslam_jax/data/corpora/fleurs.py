"""FLEURS raw release: `{lang}/{train,dev,test}.tsv` + `{lang}/audio/{split}/*.wav` (16 kHz).

Quirks: the tsv has no header and comes in two layouts, 7 columns (id, file, raw transcription,
normalized transcription, characters, samples, gender) and the older 8 (speaker id before gender);
a sentence id repeats over its several recordings, so a clip is named by its file; codes are
`{language}_{region}` (`af_za`, `cmn_hans_cn`). The raw (cased, punctuated) transcription is kept.
"""
import os
from typing import Iterator

from mslam_jax.data import audio as audio_lib
from mslam_jax.data.corpora import base

NAME = "fleurs"
DEFAULT_STREAMS = ("paired",)


def read(root: str, counter: audio_lib.SkipCounter, languages=None) -> Iterator[base.Record]:
  for code in sorted(os.listdir(root)):
    lang_dir = os.path.join(root, code)
    if not os.path.isdir(lang_dir):
      continue
    lang = base.resolve_language(NAME, code, counter, lang_dir)
    if lang is None or (languages and lang not in languages):
      continue
    for split_file in ("train", "dev", "test"):
      path = os.path.join(lang_dir, f"{split_file}.tsv")
      if not os.path.exists(path):
        continue
      split = base.split_name(split_file)
      for row in base.read_tsv(path, counter, header=False, columns=(7, 8)):
        file_name, raw = row[1], row[2]
        try:
          samples = int(row[5])
        except ValueError:
          counter.skip(base.MALFORMED_ROW, f"{path}:{row[0]}", f"num_samples {row[5]!r} is not a number")
          continue
        yield base.Record(
            corpus=NAME, id=f"fleurs-{code}-{split_file}-{os.path.splitext(file_name)[0]}", lang=lang,
            split=split, text=raw, audio_path=os.path.join(lang_dir, "audio", split_file, file_name),
            speaker=row[6] if len(row) == 8 else "", duration_s=samples / 16000.0,
            labels={"corpus_lang": code, "sentence_id": row[0]})
