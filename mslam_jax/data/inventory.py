"""The pinned language inventory: `language_inventory.tsv`, checked in next to this module.

One row per language: a fixed integer `id`, the ISO 639-3 code, a BCP-47 tag, the English name,
the ISO 15924 script and, per outside corpus, that corpus's own codes for the language (FLEURS
`cmn_hans_cn`, mC4 `iw` / `ru-Latn`, Common Voice `zh-CN`, MLS `german`, BABEL `101`, ...).
Ids never move: a new language is appended with the next id, so a corpus prepared today reads
the same tomorrow whatever packages are installed. Prepared corpora record each language's id
and `check_manifest` rejects one that disagrees with the table.
"""
import csv
import dataclasses
import functools
import os
from typing import Mapping

TABLE = os.path.join(os.path.dirname(__file__), "language_inventory.tsv")
CORPORA = ("fleurs", "mc4", "common_voice", "mls", "voxpopuli", "babel", "seamless_m4t")
SPEECH_CORPORA = ("fleurs", "common_voice", "mls", "voxpopuli", "babel", "seamless_m4t")


class InventoryError(ValueError):
  """A language or a manifest that does not agree with the pinned inventory."""


@dataclasses.dataclass(frozen=True)
class Entry:
  id: int
  code: str  # ISO 639-3
  bcp47: str
  name: str
  script: str
  corpora: Mapping[str, tuple[str, ...]]  # corpus -> its codes for this language

  @property
  def has_speech(self) -> bool:
    return any(self.corpora.get(c) for c in SPEECH_CORPORA)

  def to_json(self) -> dict:
    return {"id": self.id, "code": self.code, "bcp47": self.bcp47, "name": self.name, "script": self.script,
            "speech": self.has_speech, "corpora": {c: list(v) for c, v in self.corpora.items() if v}}


@functools.cache
def entries() -> tuple[Entry, ...]:
  with open(TABLE, encoding="utf-8", newline="") as f:
    rows = list(csv.DictReader((line for line in f if not line.startswith("#")), delimiter="\t"))
  out = []
  for i, row in enumerate(rows):
    if int(row["id"]) != i:
      raise InventoryError(f"{TABLE}: row {i} has id {row['id']}; ids are consecutive and never move")
    out.append(Entry(id=i, code=row["iso639_3"], bcp47=row["bcp47"], name=row["name"], script=row["script"],
                     corpora={c: tuple(x for x in (row.get(c) or "").split(",") if x) for c in CORPORA}))
  return tuple(out)


@functools.cache
def _by_code() -> dict[str, Entry]:
  return {e.code: e for e in entries()}


@functools.cache
def _by_corpus_code(corpus: str) -> dict[str, Entry]:
  return {code.lower(): e for e in entries() for code in e.corpora.get(corpus, ())}


def get(code: str) -> Entry:
  """The entry of an ISO 639-3 code; InventoryError when the table lacks it."""
  try:
    return _by_code()[code]
  except KeyError:
    raise InventoryError(f"language {code!r} is not in the pinned inventory ({TABLE}); see "
                         "`mslam data languages --json`") from None


@functools.cache
def _by_bcp47() -> dict[str, Entry]:
  return {e.bcp47.lower(): e for e in entries()}


def from_corpus_code(corpus: str, code: str) -> Entry | None:
  """The entry a corpus's own code names (case-insensitive), None when unknown. Codes not in the
  corpus's column are read as ISO 639-3 codes of the table, then by their BCP-47 language subtag
  (MINDS-14's `en-US`)."""
  table = {"covost2": "common_voice"}.get(corpus, corpus)
  if table in CORPORA:
    hit = _by_corpus_code(table).get(code.lower())
    if hit:
      return hit
  return _by_code().get(code) or _by_bcp47().get(code.replace("_", "-").split("-")[0].lower())


def speech_languages() -> tuple[Entry, ...]:
  return tuple(e for e in entries() if e.has_speech)


def check_manifest(manifest: dict, where: str) -> None:
  """Raises InventoryError when a prepared corpus's languages disagree with the table."""
  problems = []
  for code, entry in sorted(manifest.get("languages", {}).items()):
    known = _by_code().get(code)
    if known is None:
      problems.append(f"{code} is not in the table")
    elif entry.get("inventory_id") != known.id:
      problems.append(f"{code} has id {entry.get('inventory_id')} in the manifest, {known.id} in the table")
  if problems:
    raise InventoryError(f"{where}: the corpus disagrees with the pinned language inventory ({'; '.join(problems)}); "
                         "prepare it again with this version (mslam data prepare)")
