"""`mslam data prepare`: an outside corpus -> the corpus format of records.py, on Apache Beam.

The reader lists the corpus's records in the launching process (metadata only). They are grouped
by (stream, language, split), ordered by id, capped by `max_hours_per_language` (training split;
a stable hash of the id picks which), and cut into shards of `shard_size` records. One Beam
element per shard decodes, resamples, cuts and writes its TFRecord file (to a temporary name, then
renamed) and a small stats file under `.prepare/`. The manifest is assembled from those stats.

Deterministic: the same tree and arguments give the same shards, byte for byte. Resumable: a
shard whose stats file matches its plan is kept, so a stopped run redoes only unfinished shards.
The output directory may be remote (gs://..., anything tf.io.gfile writes), so that Dataflow
workers write straight to Cloud Storage; the corpus itself is read from a local or mounted path.
Bad input (missing or unreadable clip, empty or markup-only transcript, unknown locale, malformed
row) is skipped and counted per reason in the manifest. Any Beam runner works
(`--runner DataflowRunner --pipeline_option=--project=...`); DirectRunner is the default.
"""
import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from typing import Mapping, Sequence

from mslam_jax.data import audio as audio_lib
from mslam_jax.data import inventory
from mslam_jax.data import records
from mslam_jax.data.corpora import base

FORMAT = "mslam_jax.prepared_corpus/1"
MANIFEST = "manifest.json"
STATE_DIR = ".prepare"
SHARD_SIZE = 1000
DUPLICATE_ID = "duplicate_id"
_VOCAB_STREAMS = ("text", "paired")


@dataclasses.dataclass
class ShardPlan:
  name: str  # records.shard_name(...)
  stream: str
  lang: str
  split: str
  records: list
  fingerprint: str


def _stable_key(item_id: str) -> str:
  return hashlib.sha1(item_id.encode()).hexdigest()


def _fits(record: base.Record, stream: str) -> bool:
  if stream == "text":
    return not record.has_audio and bool(record.text)
  if stream == "paired":
    return record.has_audio and bool(record.text)
  return record.has_audio


def _duration(record: base.Record) -> float:
  if record.duration_s is not None:
    return record.duration_s
  if record.audio_path and os.path.exists(record.audio_path) and "parquet_row" not in record.labels:
    import soundfile  # pylint: disable=g-import-not-at-top
    try:
      return soundfile.info(record.audio_path).duration
    except Exception:  # pylint: disable=broad-except  (unreadable: the worker counts it)
      return 0.0
  return 0.0


def plan_shards(recs: Sequence[base.Record], streams: Sequence[str], counter: audio_lib.SkipCounter,
                max_hours_per_language: float | None, shard_size: int, settings: Mapping) -> list[ShardPlan]:
  groups = collections.defaultdict(dict)
  for r in recs:
    for stream in streams:
      if _fits(r, stream):
        group = groups[(stream, r.lang, r.split)]
        if r.id in group:
          counter.skip(DUPLICATE_ID, r.id, f"listed twice ({stream})")
          continue
        group[r.id] = r
  plans = []
  for (stream, lang, split), group in sorted(groups.items()):
    items = [group[k] for k in sorted(group)]
    if max_hours_per_language is not None and split == "train" and stream != "text":
      budget, kept = max_hours_per_language * 3600.0, set()
      for r in sorted(items, key=lambda r: _stable_key(r.id)):
        d = _duration(r)
        if d > budget:
          break
        budget -= d
        kept.add(r.id)
      items = [r for r in items if r.id in kept]
    count = max(1, math.ceil(len(items) / shard_size)) if items else 0
    for index in range(count):
      chunk = items[index * len(items) // count:(index + 1) * len(items) // count]
      digest = hashlib.sha256(json.dumps(
          [settings, [dataclasses.astuple(r) if not r.audio_bytes else r.id for r in chunk]],
          sort_keys=True, default=str).encode()).hexdigest()[:20]
      plans.append(ShardPlan(records.shard_name(stream, lang, split, index, count), stream, lang, split, chunk, digest))
  return plans


def _stats_path(out_dir: str, shard: str) -> str:
  return os.path.join(out_dir, STATE_DIR, shard + ".json")


def _gfile():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.io.gfile


def _write_json(path: str, payload: dict, indent: int | None = None) -> None:
  """Written to a temporary name and renamed, so a reader never sees half a file."""
  gfile = _gfile()
  with gfile.GFile(path + ".tmp", "w") as f:
    f.write(json.dumps(payload, ensure_ascii=False, indent=indent))
  gfile.rename(path + ".tmp", path, overwrite=True)


def read_stats(out_dir: str, plan: ShardPlan) -> dict | None:
  gfile = _gfile()
  try:
    with gfile.GFile(_stats_path(out_dir, plan.name)) as f:
      stats = json.load(f)
  except (OSError, ValueError, tf_errors()):
    return None
  if stats.get("fingerprint") != plan.fingerprint or not gfile.exists(os.path.join(out_dir, plan.name)):
    return None
  return stats


def tf_errors():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return tf.errors.OpError


def write_shard(plan: ShardPlan, out_dir: str, max_clip_seconds: float) -> dict:
  """Decodes and writes one shard; returns (and stores) its stats. Runs on a Beam worker."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  start = time.time()
  counter = audio_lib.SkipCounter(logging.getLogger(__name__))
  path = os.path.join(out_dir, plan.name)
  tf.io.gfile.makedirs(os.path.dirname(path))
  tmp = f"{path}.tmp-{os.getpid()}"
  clips, samples, characters = 0, 0, 0
  chars = collections.Counter()
  with tf.io.TFRecordWriter(tmp) as writer:
    for record in plan.records:
      for utt in base.to_utterances(record, counter, max_clip_seconds=max_clip_seconds):
        if plan.stream == "speech" and len(utt.audio) == 0:
          continue
        writer.write(base.to_example_bytes(utt, record))
        clips += 1
        samples += len(utt.audio)
        characters += len(utt.text)
        if plan.stream in _VOCAB_STREAMS and plan.split == "train":
          chars.update(utt.text)
          chars.update(record.labels.get("translation", ""))  # CoVoST 2's targets need their characters too
  tf.io.gfile.rename(tmp, path, overwrite=True)
  stats = {"fingerprint": plan.fingerprint, "clips": clips, "hours": samples / records.SAMPLE_RATE / 3600.0,
           "characters": characters, "character_counts": dict(sorted(chars.items())),
           **counter.as_dict(), "seconds": round(time.time() - start, 3)}
  stats_path = _stats_path(out_dir, plan.name)
  tf.io.gfile.makedirs(os.path.dirname(stats_path))
  _write_json(stats_path, stats)
  logging.info("prepared %s: %d clips, %.3f h, %s", plan.name, clips, stats["hours"], counter.summary())
  return stats


def _remove_stale(out_dir: str, plans: Sequence[ShardPlan]) -> None:
  """Shards of an earlier run that this plan no longer has (another shard count); only files this
  command wrote (those with a stats file) are removed."""
  gfile = _gfile()
  planned = {p.name for p in plans}
  state = os.path.join(out_dir, STATE_DIR)
  if not gfile.isdir(state):
    return
  for dirpath, _, names in gfile.walk(state):
    for n in names:
      if not n.endswith(".json"):
        continue
      shard = os.path.join(dirpath, n)[len(state) + 1:-len(".json")]
      if shard not in planned:
        for p in (os.path.join(out_dir, shard), os.path.join(dirpath, n)):
          if gfile.exists(p):
            gfile.remove(p)


def run_beam(plans: Sequence[ShardPlan], out_dir: str, max_clip_seconds: float, runner: str,
             pipeline_options: Sequence[str]) -> None:
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top
  shards = beam.metrics.Metrics.counter("mslam_prepare", "shards")

  def process(plan):
    stats = write_shard(plan, out_dir, max_clip_seconds)
    shards.inc()
    return plan.name, stats["clips"]

  options = PipelineOptions([f"--runner={runner}", *pipeline_options])
  with beam.Pipeline(options=options) as p:
    _ = (p | "Shards" >> beam.Create(list(plans)) | "Spread" >> beam.Reshuffle()
         | "DecodeAndWrite" >> beam.Map(process))


def vocabulary_from_counts(counts: Mapping[str, int]):
  """The character vocabulary of CharacterVocabulary.build from character counts (no texts)."""
  from mslam_jax.data import vocabularies  # pylint: disable=g-import-not-at-top
  merged = collections.Counter()
  for char, n in counts.items():
    merged[vocabularies.normalize(char)] += n
  symbols = sorted((c for c in merged if len(c) == 1 and vocabularies._is_symbol(c)),  # pylint: disable=protected-access
                   key=lambda c: (-merged[c], ord(c)))
  return vocabularies.CharacterVocabulary(sorted(symbols[:vocabularies.MAX_SIZE - vocabularies.NUM_RESERVED]))


def prepare(corpus: str, root: str, out_dir: str, languages: Sequence[str] | None = None,
            streams: Sequence[str] | None = None, max_hours_per_language: float | None = None,
            runner: str = "DirectRunner", pipeline_options: Sequence[str] = (),
            options: Mapping[str, str] | None = None, shard_size: int = SHARD_SIZE,
            max_clip_seconds: float = 30.0) -> dict:
  """Prepares `corpus` from `root` into `out_dir`; returns the manifest (see the module docstring)."""
  from mslam_jax.data import corpora  # pylint: disable=g-import-not-at-top
  start = time.time()
  reader = corpora.reader(corpus)
  if not os.path.isdir(root):
    raise ValueError(f"--root {root} is not a directory")
  streams = tuple(streams or reader.DEFAULT_STREAMS)
  bad = [s for s in streams if s not in records.STREAMS]
  if bad:
    raise ValueError(f"--streams {bad} not among {records.STREAMS}")
  wanted = None
  if languages:
    wanted = set()
    for code in languages:
      entry = inventory.from_corpus_code(corpus, code)
      if entry is None:
        raise ValueError(f"--languages: {code!r} is neither a {corpus} code nor an ISO 639-3 code of the "
                         "pinned inventory (mslam data languages)")
      wanted.add(entry.code)
  if shard_size < 1 or (max_hours_per_language is not None and max_hours_per_language <= 0):
    raise ValueError("--shard-size and --max-hours-per-language must be positive")
  counter = audio_lib.SkipCounter(logging.getLogger(__name__))
  logging.info("listing %s under %s", corpus, root)
  recs = list(reader.read(root, counter, wanted, **dict(options or {})))
  settings = {"format": FORMAT, "corpus": corpus, "max_clip_seconds": max_clip_seconds}
  plans = plan_shards(recs, streams, counter, max_hours_per_language, shard_size, settings)
  if not plans:
    raise ValueError(f"no {'/'.join(streams)} record of {corpus} found under {root} "
                     f"({counter.summary()}); check --root, --languages and --streams")
  _gfile().makedirs(out_dir)
  _remove_stale(out_dir, plans)
  todo = [p for p in plans if read_stats(out_dir, p) is None]
  logging.info("%s: %d records in %d shards; %d to write, %d kept from an earlier run", corpus, len(recs),
               len(plans), len(todo), len(plans) - len(todo))
  if todo:
    run_beam(todo, out_dir, max_clip_seconds, runner, pipeline_options)
  manifest = assemble_manifest(out_dir, plans, counter, settings, corpus, root, streams, start)
  logging.info("%s prepared in %.1f s: %s", out_dir, manifest["prepare_seconds"],
               json.dumps(manifest["totals"]))
  return manifest


def assemble_manifest(out_dir, plans, counter, settings, corpus, root, streams, start) -> dict:
  languages_ = {}
  totals = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
  char_counts = collections.Counter()
  merged = audio_lib.SkipCounter()
  merged.merge(counter)
  for plan in plans:
    stats = read_stats(out_dir, plan)
    if stats is None:
      raise RuntimeError(f"shard {plan.name} was not written (see the pipeline's log)")
    merged.skipped.update(stats["skipped"])
    merged.repaired.update(stats["repaired"])
    for reason, examples in stats.get("examples", {}).items():
      merged.examples[reason].extend(examples[:max(0, 5 - len(merged.examples[reason]))])
    char_counts.update(stats["character_counts"])
    entry = languages_.setdefault(plan.lang, {
        "inventory_id": inventory.get(plan.lang).id, "name": inventory.get(plan.lang).name,
        "script": inventory.get(plan.lang).script, "held_out": False, "streams": {}})
    split = entry["streams"].setdefault(plan.stream, {}).setdefault(
        plan.split, {"clips": 0, "characters": 0, "hours": 0.0, "shards": []})
    for key in ("clips", "characters", "hours"):
      split[key] += stats[key]
      totals[plan.stream][plan.split][key] += stats[key]
    if stats["clips"]:
      split["shards"].append(plan.name)
  vocab = vocabulary_from_counts(char_counts)
  gfile = _gfile()
  with tempfile.TemporaryDirectory() as local:  # the vocabulary saves locally; copied to out_dir
    saved = vocab.save(local)
    gfile.makedirs(os.path.join(out_dir, "vocab"))
    gfile.copy(saved, os.path.join(out_dir, "vocab", os.path.basename(saved)), overwrite=True)
  config_hash = hashlib.sha256(json.dumps([settings, [p.fingerprint for p in plans]]).encode()).hexdigest()[:20]
  manifest = {
      "format": FORMAT, "corpus": corpus, "root": os.path.abspath(root), "config_hash": config_hash,
      "config": settings, "sample_rate": records.SAMPLE_RATE, records.HELD_OUT_KEY: [],
      "languages": dict(sorted(languages_.items())),
      "streams": {s: sorted(c for c, e in languages_.items() if s in e["streams"]) for s in records.STREAMS},
      "totals": {s: {sp: dict(v) for sp, v in by.items()} for s, by in totals.items()},
      "skipped": dict(sorted(merged.skipped.items())), "repaired": dict(sorted(merged.repaired.items())),
      "skipped_examples": merged.as_dict()["examples"],
      "vocab": {"dir": "vocab", "size": vocab.vocab_size},
      "character_counts": dict(sorted(char_counts.items())),
      "build_seconds": round(time.time() - start, 2), "prepare_seconds": round(time.time() - start, 2),
      "complete": True,
  }
  _write_json(os.path.join(out_dir, MANIFEST), manifest, indent=1)
  return manifest
