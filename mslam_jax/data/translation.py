"""Built-in speech translation (X -> English), made offline from CLDR data parallel by key.

Unicode CLDR names the same things in every locale: month 3, weekday 0, territory "FR", language
"de". So eSpeak speech of a locale's string, paired with the English string of the same key, is a
real X -> En translation item. Besides single names, an item can be a list of two or three
territory names joined by each locale's own list pattern ("Frankreich, Spanien und Peru" ->
"France, Spain, and Peru") or a date in each locale's long format ("4. März 1987" ->
"March 4, 1987"): the target then has structure the model must reorder and copy.

`build_translation_data(corpus_dir)` writes next to a built-in corpus:

  {corpus_dir}/translation/manifest.json
  {corpus_dir}/translation/{lang}/{split}.tfrecord-{i:05d}-of-{n:05d}

one tf.train.Example per item (`to_example_bytes`): id, lang, key, text (the source string, also
the input of text-to-text translation), target (English), the source speech as int16 PCM, voice.
Source languages are the corpus' languages with an eSpeak voice, English excepted. Splits are by
item within a language (80/10/10, as the corpus); test and validation speech come from eSpeak
voice variants training never hears. Held-out source languages (default: the corpus' held-out
languages) have no train split: zero-shot translation.
"""
import collections
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import time
import zlib
from typing import Any, Iterator, Mapping, Optional, Sequence

import gin
import numpy as np

from mslam_jax.data import audio as audio_lib
from mslam_jax.data import espeak
from mslam_jax.data import languages
from mslam_jax.data import records
from mslam_jax.data import text_sources
from mslam_jax.data.special_ids import EOS_ID

FORMAT = "mslam_jax.builtin_translation/1"
SUBDIR = "translation"
MANIFEST = "manifest.json"
TARGET_LANGUAGE = "eng"
KINDS = ("month", "weekday", "territory", "language", "territory_list", "date")
DEFAULT_PER_LANGUAGE = 48
# Territory and language names: CLDR has ~300 and ~600; a shared pool makes each recur.
DEFAULT_POOL_SIZES = {"territory": 48, "language": 24}
SHARD_SIZE = 2000
NO_PARALLEL_TEXT = "no_parallel_text"
SYNTHESIS_FAILED = "synthesis_failed"


@dataclasses.dataclass(frozen=True)
class Pair:
  """One parallel item: `key` names what both strings say (e.g. "month:3", "date:1987-03-04")."""
  key: str
  source: str
  target: str


@dataclasses.dataclass
class Item:
  """A translation record: a Pair of `lang` with the source's speech (float32, 16 kHz)."""
  id: str
  lang: str
  key: str
  text: str
  target: str
  audio: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros([0], np.float32))
  voice: str = ""


# ---- parallel strings ----

@functools.cache
def keyed_names(code: str) -> dict[str, str]:
  """{key: cleaned string} of the names the locale itself has (nothing inherited from root):
  "month:1".."month:12", "weekday:0".."weekday:6" (Monday = 0), "territory:FR", "language:de"."""
  data = text_sources._cldr_own_data(code)  # pylint: disable=protected-access  (the one reader of CLDR files)
  out = {}
  for kind, values in (("month", data.get("months", {}).get("format", {}).get("wide", {})),
                       ("weekday", data.get("days", {}).get("format", {}).get("wide", {})),
                       ("territory", data.get("territories", {})), ("language", data.get("languages", {}))):
    if not isinstance(values, Mapping):
      continue
    for key, value in values.items():
      if isinstance(value, str) and text_sources.clean_text(value):
        out[f"{kind}:{key}"] = text_sources.clean_text(value)
  return out


def _locale(code: str) -> Optional[str]:
  return text_sources.cldr_locales().get(code)


def _format_list(code: str, items: Sequence[str]) -> str:
  from babel import lists  # pylint: disable=g-import-not-at-top
  if text_sources._cldr_has(code, "list_patterns"):  # pylint: disable=protected-access
    try:
      return lists.format_list(list(items), locale=_locale(code))
    except Exception:  # pylint: disable=broad-except
      pass
  return ", ".join(items)


def _format_date(code: str, date: datetime.date) -> str:
  from babel import dates  # pylint: disable=g-import-not-at-top
  return text_sources.clean_text(dates.format_date(date, format="long", locale=_locale(code)))


def parallel_keys(code: str, target: str = TARGET_LANGUAGE) -> dict[str, list[str]]:
  """Keys of the names both `code` and `target` have, by kind (sorted), the source in a script
  eSpeak reads for `code`; names that are the same string in both (loanwords) are kept."""
  src, tgt = keyed_names(code), keyed_names(target)
  speakable = text_sources.scripts_for(languages.get(code).script, speech=True)
  out = collections.defaultdict(list)
  for key in sorted(set(src) & set(tgt)):
    if text_sources.in_scripts(src[key], speakable):
      out[key.split(":", 1)[0]].append(key)
  return dict(out)


def pair_for_key(code: str, key: str, target: str = TARGET_LANGUAGE) -> Pair:
  """The parallel strings of one key (a name, a "territory_list:FR+ES" or a "date:1987-03-04")."""
  kind, value = key.split(":", 1)
  if kind == "territory_list":
    names = [f"territory:{v}" for v in value.split("+")]
    return Pair(key, _format_list(code, [keyed_names(code)[n] for n in names]),
                _format_list(target, [keyed_names(target)[n] for n in names]))
  if kind == "date":
    date = datetime.date.fromisoformat(value)
    return Pair(key, _format_date(code, date), _format_date(target, date))
  return Pair(key, keyed_names(code)[key], keyed_names(target)[key])


def key_pool(kind: str, size: Optional[int], seed: int) -> Optional[frozenset[str]]:
  """`size` keys of `kind` drawn from the English names with `seed` alone, so that every source
  language draws from the same pool (None: no limit)."""
  if size is None:
    return None
  keys = sorted(k for k in keyed_names(TARGET_LANGUAGE) if k.startswith(kind + ":"))
  rng = np.random.default_rng([seed, zlib.crc32(f"pool/{kind}".encode())])
  return frozenset(keys[i] for i in rng.permutation(len(keys))[:size])


def iter_pairs(code: str, seed: int, kinds: Sequence[str] = KINDS, max_chars: int = 160,
               max_failures: int = 200, pool_sizes: Optional[Mapping[str, int]] = None) -> Iterator[Pair]:
  """Distinct Pairs of `code` -> English in a deterministic order for `seed`: each draw picks a
  kind uniformly among those the language has, then an item of it. Ends when `max_failures`
  draws in a row give nothing new.

  `pool_sizes` ({"territory": 48, ...}) limits a kind's names to a pool shared by all languages:
  with few items per language, a name then recurs across source languages (learnable), instead
  of each of ~600 language names occurring about once."""
  unknown = set(kinds) - set(KINDS)
  if unknown:
    raise ValueError(f"unknown translation kinds {sorted(unknown)}; choose from {KINDS}")
  by_kind = parallel_keys(code)
  for kind, size in (pool_sizes or {}).items():
    pool = key_pool(kind, size, seed)
    if kind in by_kind:
      by_kind[kind] = [k for k in by_kind[kind] if k in pool]
  speakable = text_sources.scripts_for(languages.get(code).script, speech=True)
  has_dates = "month" in by_kind and _locale(code) is not None
  available = [k for k in kinds if by_kind.get(k) or (k == "territory_list" and len(by_kind.get("territory", ())) >= 3)
               or (k == "date" and has_dates)]
  if not available:
    return
  rng = np.random.default_rng([seed, zlib.crc32(f"translation/{code}".encode())])
  seen: set[str] = set()
  failures = 0
  while failures < max_failures:
    kind = available[int(rng.integers(len(available)))]
    if kind == "territory_list":
      names = by_kind["territory"]
      picked = rng.choice(len(names), size=int(rng.integers(2, 4)), replace=False)
      key = "territory_list:" + "+".join(names[i].split(":", 1)[1] for i in picked)
    elif kind == "date":
      day = datetime.date(1900, 1, 1) + datetime.timedelta(days=int(rng.integers(0, 200 * 365)))
      key = f"date:{day.isoformat()}"
    else:
      key = by_kind[kind][int(rng.integers(len(by_kind[kind])))]
    if key in seen:
      failures += 1
      continue
    seen.add(key)
    try:
      pair = pair_for_key(code, key)
    except Exception as e:  # pylint: disable=broad-except
      logging.debug("no pair for %s %s: %s", code, key, e)
      failures += 1
      continue
    if (not pair.source or not pair.target or len(pair.source) > max_chars
        or not text_sources.in_scripts(pair.source, speakable)):
      failures += 1
      continue
    failures = 0
    yield pair


# ---- records ----

def to_example_bytes(item: Item) -> bytes:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def b(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))

  feature = {
      "id": b([item.id.encode()]), "lang": b([item.lang.encode()]), "key": b([item.key.encode("utf-8")]),
      "text": b([item.text.encode("utf-8")]), "target": b([item.target.encode("utf-8")]),
      "audio_pcm16": b([records.audio_to_pcm16(np.asarray(item.audio, np.float32))]),
      "num_samples": tf.train.Feature(int64_list=tf.train.Int64List(value=[len(item.audio)])),
      "voice": b([item.voice.encode()]),
  }
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def feature_description() -> dict:
  """tf.io.parse_single_example spec of the records (SeqIO sources read them with it)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  spec = {k: tf.io.FixedLenFeature([], tf.string) for k in ("id", "lang", "key", "text", "target",
                                                            "audio_pcm16", "voice")}
  spec["num_samples"] = tf.io.FixedLenFeature([], tf.int64)
  return spec


def from_example_bytes(data: bytes) -> Item:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  f = tf.train.Example.FromString(data).features.feature
  s = lambda name: f[name].bytes_list.value[0].decode("utf-8")
  return Item(id=s("id"), lang=s("lang"), key=s("key"), text=s("text"), target=s("target"),
              audio=records.pcm16_to_audio(f["audio_pcm16"].bytes_list.value[0]), voice=s("voice"))


def shard_pattern(lang: str, split: str) -> str:
  """Glob of one language's split, relative to the corpus directory."""
  return f"{SUBDIR}/{lang}/{split}.tfrecord-*"


def read_manifest(corpus_dir: str) -> Optional[dict]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (local or remote: gs://...)
  try:
    with tf.io.gfile.GFile(os.path.join(corpus_dir, SUBDIR, MANIFEST)) as f:
      return json.load(f)
  except (OSError, ValueError, tf.errors.NotFoundError):
    return None


def read_items(corpus_dir: str, split: str, langs: Optional[Sequence[str]] = None,
               max_per_lang: Optional[int] = None) -> list[Item]:
  """The items of a split, language by language; unreadable records are skipped and counted."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  manifest = read_manifest(corpus_dir)
  if manifest is None:
    raise FileNotFoundError(f"no built-in translation data in {corpus_dir}: make it with "
                            "mslam_jax.data.translation.build_translation_data(corpus_dir)")
  out, bad = [], 0
  for lang in (sorted(manifest["languages"]) if langs is None else langs):
    files = sorted(tf.io.gfile.glob(os.path.join(corpus_dir, shard_pattern(lang, split))))
    count = 0
    for raw in tf.data.TFRecordDataset(files).as_numpy_iterator() if files else ():
      if max_per_lang is not None and count >= max_per_lang:
        break
      try:
        out.append(from_example_bytes(raw))
        count += 1
      except Exception as e:  # pylint: disable=broad-except
        bad += 1
        logging.warning("skipping an unreadable translation record of %s/%s: %s", lang, split, e)
  if bad:
    logging.warning("skipped %d unreadable translation records in %s", bad, corpus_dir)
  return out


# ---- the builder ----

def source_languages(corpus_manifest: Mapping[str, Any]) -> list[str]:
  """The corpus' languages with an eSpeak voice, English excepted (sorted)."""
  out = []
  for code in sorted(corpus_manifest.get("languages", {})):
    if code == TARGET_LANGUAGE:
      continue
    try:
      lang = languages.get(code)
    except KeyError:
      continue
    if "paired" in lang.streams and lang.espeak_voices:
      out.append(code)
  return out


def _split(pairs: list, held_out: bool) -> dict[str, list]:
  if held_out:
    half = (len(pairs) + 1) // 2
    return {"train": [], "validation": pairs[:half], "test": pairs[half:]}
  n = len(pairs)
  if n < 3:
    return {"train": pairs, "validation": [], "test": []}
  evals = max(1, round(n * 0.1))
  return {"train": pairs[:n - 2 * evals], "validation": pairs[n - 2 * evals:n - evals], "test": pairs[n - evals:]}


def _write(out_dir: str, lang: str, split: str, items: Sequence[Item]) -> list[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not items:
    return []
  count = max(1, math.ceil(len(items) / SHARD_SIZE))
  names = []
  for index in range(count):
    name = f"{SUBDIR}/{lang}/{split}.tfrecord-{index:05d}-of-{count:05d}"
    os.makedirs(os.path.dirname(os.path.join(out_dir, name)), exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(out_dir, name)) as writer:
      for item in items[index::count]:
        writer.write(to_example_bytes(item))
    names.append(name)
  return names


def _unknown_characters(corpus_dir: str, items: Sequence[Item]) -> dict[str, int]:
  """How many source and target characters the corpus vocabulary lacks (they become UNK): the
  vocabulary is built from the corpus' training text, which may miss some names' letters."""
  try:
    from mslam_jax.data import vocabularies  # pylint: disable=g-import-not-at-top
    vocab = vocabularies.vocabulary_for_corpus(corpus_dir)
  except Exception as e:  # pylint: disable=broad-except
    logging.warning("no vocabulary in %s to check the translation characters against: %s", corpus_dir, e)
    return {}
  count = lambda texts: sum(1 for text in texts for i in vocab.encode(text) if i == vocabularies.UNK_ID)
  return {"source": count(x.text for x in items), "target": count(x.target for x in items),
          "total_source": sum(len(x.text) for x in items), "total_target": sum(len(x.target) for x in items)}


def _fingerprint(settings: Mapping[str, Any]) -> str:
  h = hashlib.sha256(json.dumps({"format": FORMAT, **settings}, sort_keys=True).encode())
  for module in (__file__, text_sources.__file__, espeak.__file__):
    with open(module, "rb") as f:
      h.update(f.read())
  return h.hexdigest()[:20]


@gin.configurable(denylist=["corpus_dir"])
def build_translation_data(corpus_dir: str, per_language: int = DEFAULT_PER_LANGUAGE, seed: int = 0,
                           languages_: Optional[Sequence[str]] = None, held_out: Optional[Sequence[str]] = None,
                           kinds: Sequence[str] = KINDS, pool_sizes: Optional[Mapping[str, int]] = None,
                           max_seconds: float = 20.0, force: bool = False,
                           progress: bool = True, synthesize=None) -> dict:
  """Builds (or finds up to date) the built-in translation data of a built-in corpus.

  Args:
    corpus_dir: a built-in corpus (its manifest picks the source and held-out languages); the
      data goes to corpus_dir/translation/ (replaced, nothing else touched).
    per_language: items per source language (fewer when a language runs out; counted).
    seed: every random choice (items, speakers).
    languages_ / held_out: explicit source / held-out languages instead of the corpus'.
    kinds: which of KINDS to draw.
    pool_sizes: names per kind shared by all languages (`iter_pairs`); default DEFAULT_POOL_SIZES.
    max_seconds: longest clip; longer ones are skipped and counted.
    force: rebuild even when the manifest says the build is up to date.
    synthesize: (text, SpeakerStyle) -> espeak.Synthesis; default: an espeak.SynthesisWorker.
  """
  start = time.time()
  if per_language < 1:
    raise ValueError(f"build_translation_data.per_language must be >= 1, got {per_language}")
  corpus_path = os.path.join(corpus_dir, "manifest.json")
  try:
    with open(corpus_path, encoding="utf-8") as f:
      corpus = json.load(f)
  except (OSError, ValueError) as e:
    raise FileNotFoundError(f"{corpus_path} is missing or unreadable: build the corpus first "
                            f"(mslam data build-builtin --out {corpus_dir})") from e
  sources = list(languages_) if languages_ else source_languages(corpus)
  held = sorted(set(records.held_out_languages(corpus) if held_out is None else held_out) & set(sources))
  if not sources:
    raise ValueError(f"no source language with an eSpeak voice in {corpus_dir}")
  if len(held) >= len(sources):
    raise ValueError(f"every source language {sources} is held out: nothing to train on")
  pool_sizes = dict(DEFAULT_POOL_SIZES if pool_sizes is None else pool_sizes)
  settings = dict(sources=sources, held_out=held, per_language=per_language, seed=seed, kinds=list(kinds),
                  pool_sizes=pool_sizes,
                  max_seconds=max_seconds, corpus=corpus.get("config_hash"))
  digest = _fingerprint(settings)
  existing = read_manifest(corpus_dir)
  if not force and existing and existing.get("config_hash") == digest and existing.get("complete"):
    logging.info("built-in translation data in %s is up to date; nothing to do", corpus_dir)
    return existing
  out_root = os.path.join(corpus_dir, SUBDIR)
  if os.path.isdir(out_root):
    shutil.rmtree(out_root)  # only this builder writes here
  os.makedirs(out_root)

  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  counter = audio_lib.SkipCounter(logging.getLogger(__name__))
  worker = None
  if synthesize is None:
    synthesize = worker = espeak.SynthesisWorker()
  entries, targets, entries_items = {}, collections.Counter(), []
  try:
    for code in tqdm(sources, desc="built-in translation", unit="lang", disable=not progress, dynamic_ncols=True):
      lang = languages.get(code)
      pairs = []
      for pair in iter_pairs(code, seed, kinds, pool_sizes=pool_sizes):
        pairs.append(pair)
        if len(pairs) >= per_language:
          break
      if len(pairs) < per_language:
        counter.skip(NO_PARALLEL_TEXT, code, f"{len(pairs)} of {per_language} parallel items")
      entry = {"lang_id": languages.lang_id(code), "held_out": code in held, "splits": {}}
      for split, split_pairs in _split(pairs, code in held).items():
        rng = np.random.default_rng([seed, zlib.crc32(f"translation/{code}/{split}".encode())])
        variants = espeak.TRAIN_VARIANTS if split == "train" else espeak.EVAL_VARIANTS
        items = []
        for i, pair in enumerate(split_pairs):
          item_id = f"{code}-translation-{split}-{i:05d}"
          style = espeak.sample_style(rng, lang.espeak_voices, variants)
          try:
            audio = audio_lib.validate_audio(synthesize(pair.source, style).audio, espeak.SAMPLE_RATE, item_id,
                                             counter, max_seconds)
          except espeak.EspeakError as e:
            counter.skip(SYNTHESIS_FAILED, item_id, str(e))
            continue
          except audio_lib.BadItem as e:
            counter.skip(e.reason, item_id, e.message)
            continue
          items.append(Item(item_id, code, pair.key, pair.source, pair.target, audio, style.describe()))
        if split == "train":
          targets.update(item.target for item in items)
        entries_items.extend(items)
        entry["splits"][split] = {"items": len(items), "hours": sum(len(x.audio) for x in items) / 16000 / 3600,
                                  "shards": _write(corpus_dir, code, split, items)}
      entries[code] = entry
  finally:
    if worker is not None:
      worker.close()
  manifest = {
      "format": FORMAT, "config_hash": digest,
      "unknown_characters": _unknown_characters(corpus_dir, entries_items), "config": settings, "target_language": TARGET_LANGUAGE,
      records.HELD_OUT_KEY: held, "languages": entries,
      # The trivial baseline's answer: the most frequent English target of the training items.
      "most_frequent_target": targets.most_common(1)[0][0] if targets else "",
      "skipped": dict(sorted(counter.skipped.items())), "skipped_examples": counter.as_dict()["examples"],
      "build_seconds": round(time.time() - start, 2), "complete": True,
  }
  tmp = os.path.join(out_root, MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, ensure_ascii=False, indent=1)
  os.replace(tmp, os.path.join(out_root, MANIFEST))
  logging.info("built-in translation: %d source languages (%d held out) in %.1f s; %s", len(sources), len(held),
               time.time() - start, counter.summary())
  return manifest


# ---- batches for TranslationModel ----

def _pad_rows(rows: Sequence[np.ndarray], length: int, dtype) -> tuple[np.ndarray, np.ndarray]:
  out = np.zeros((len(rows), length), dtype)
  mask = np.zeros((len(rows), length), np.int32)
  for i, row in enumerate(rows):
    n = min(len(row), length)
    out[i, :n], mask[i, :n] = row[:n], 1
  return out, mask


def make_batch(items: Sequence[Item], vocabulary: Any, stream: str, target_length: int,
               audio_samples: Optional[int] = None, text_length: Optional[int] = None) -> dict[str, np.ndarray]:
  """One stream of a TranslationModel batch (models/translation.py) from items: audio or source
  tokens, English targets + EOS, padded (or cut) to the given lengths."""
  targets, targets_mask = _pad_rows([list(vocabulary.encode(x.target)) + [EOS_ID] for x in items],
                                    target_length, np.int32)
  out = {"targets": targets, "targets_mask": targets_mask,
         "lang": np.asarray([languages.lang_id(x.lang) for x in items], np.int32)}
  if stream == "speech":
    out["audio"], out["audio_mask"] = _pad_rows([x.audio for x in items], audio_samples, np.float32)
  elif stream == "text":
    out["tokens"], out["tokens_mask"] = _pad_rows([vocabulary.encode(x.text) for x in items], text_length, np.int32)
  else:
    raise ValueError(f"stream must be 'speech' or 'text', got {stream!r}")
  return out
