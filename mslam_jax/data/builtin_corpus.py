"""The built-in corpus: real multilingual text and eSpeak NG speech, made offline.

For every selected language the builder draws distinct utterances from `text_sources` (a seeded
order) and hands them out to three disjoint streams:
- `paired`: synthesized speech + transcript + word timings, for languages with an eSpeak voice;
- `speech`: synthesized speech of other sentences (unpaired; the text is stored, never trained on);
- `text`: text only, for every language with text.
Each stream is split train/validation/test by utterance (80/10/10, at least one each). The
held-out languages' paired data goes to validation and test only (zero-shot evaluation); their
scripts occur in training languages, so a CTC head can emit their characters.

The output follows `records.py`; `manifest.json` holds per language, stream and split the clips,
characters and hours, the held-out languages, the seed and the skipped items by reason. Building
again with the same arguments is a no-op (a config hash in the manifest).
"""
import collections
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from importlib import metadata
from typing import Iterable, Sequence

import gin
import numpy as np

from mslam_jax.data import audio as audio_lib
from mslam_jax.data import espeak
from mslam_jax.data import languages
from mslam_jax.data import phones
from mslam_jax.data import records
from mslam_jax.data import text_sources

FORMAT = "mslam_jax.builtin_corpus/1"
MANIFEST = "manifest.json"
SMALL_MAX_LANGUAGES = 8
SMALL_PER_LANGUAGE = 12
# Zero-shot languages: speech languages whose scripts (Latin, Cyrillic, Devanagari, Arabic) the
# training languages share. Latin first, so that even a small selection holds one out.
DEFAULT_HELD_OUT = ("afr", "ukr", "slk", "mar", "swa", "urd")
# Languages a small selection starts with (after the held-out ones): many scripts, common voices.
CORE_LANGUAGES = ("eng", "deu", "rus", "cmn", "fra", "hin", "spa", "ara", "jpn", "por", "ita",
                  "tur", "pol", "kor", "fas", "vie", "ell", "heb", "tha", "ben", "tam", "kat")
SPLIT_FRACTIONS = {"validation": 0.1, "test": 0.1}
SHARD_SIZE = 2000
NO_VOICE = "no_voice_or_text"
SYNTHESIS_FAILED = "synthesis_failed"
NO_WORD_TIMINGS = "no_word_timings"
NOT_ENOUGH_TEXT = "not_enough_text"


@dataclasses.dataclass(frozen=True)
class BuildConfig:
  """Everything the content of a build depends on (its hash names a build)."""
  languages: tuple[str, ...]
  held_out: tuple[str, ...]
  per_language: int
  paired_per_language: int
  text_per_language: int
  seed: int
  max_speech_chars: int
  max_text_chars: int
  max_seconds: float


def _code_fingerprint() -> str:
  """Changes with this code and the data packages, so that a stale build is redone."""
  h = hashlib.sha256()
  for module in (__file__, text_sources.__file__, espeak.__file__, languages.__file__, audio_lib.__file__):
    with open(module, "rb") as f:
      h.update(f.read())
  for package in ("babel", "pycountry", "num2words", "espeakng-loader", "fonttools", "scipy"):
    try:
      h.update(f"{package}={metadata.version(package)}".encode())
    except metadata.PackageNotFoundError:
      pass
  return h.hexdigest()


def config_hash(config: BuildConfig) -> str:
  payload = json.dumps({"format": FORMAT, **dataclasses.asdict(config), "code": _code_fingerprint()},
                       sort_keys=True)
  return hashlib.sha256(payload.encode()).hexdigest()[:20]


def select_languages(max_languages: int | None, seed: int, requested: Sequence[str] | None,
                     counter: audio_lib.SkipCounter) -> list[str]:
  """The languages of a build: `requested` (unknown codes skipped and counted) or a selection."""
  if requested:
    out = []
    for code in requested:
      try:
        lang = languages.get(code)
      except KeyError as e:
        counter.skip(audio_lib.UNKNOWN_LANGUAGE, code, str(e))
        continue
      if not lang.streams:
        counter.skip(NO_VOICE, code, "the registry has no built-in text or speech for it")
        continue
      if code not in out:
        out.append(code)
    return out
  rng = np.random.default_rng(seed)
  paired = [l.code for l in languages.with_stream("paired")]
  text_only = [l.code for l in languages.with_stream("text") if l.code not in set(paired)]
  total = len(paired) + len(text_only) if max_languages is None else max_languages
  num_held_out = min(len(DEFAULT_HELD_OUT), max(1, min(total, len(paired)) // 8))
  head = [c for c in DEFAULT_HELD_OUT if c in paired][:num_held_out]
  head += [c for c in CORE_LANGUAGES if c in paired and c not in head]
  rest = [c for c in paired if c not in head]
  order = head + [rest[i] for i in rng.permutation(len(rest))]
  order += [text_only[i] for i in rng.permutation(len(text_only))]
  return order[:total]


def choose_held_out(selected: Sequence[str], requested: Sequence[str] | None) -> list[str]:
  """Held-out languages among `selected`: speech languages whose script a training language has."""
  candidates = list(requested) if requested is not None else list(DEFAULT_HELD_OUT)
  paired = [c for c in selected if "paired" in languages.get(c).streams]
  held_out = []
  for code in candidates:
    if code not in paired:
      if requested is not None:
        logging.warning("held-out language %s is not a selected speech language; ignored", code)
      continue
    script = languages.get(code).script
    train_scripts = {languages.get(c).script for c in paired if c != code and c not in held_out + [code]}
    if script not in train_scripts:
      logging.warning("held-out language %s (%s) kept for training: no training language writes %s",
                      code, script, script)
      continue
    if len(held_out) + 1 >= len(paired):
      break  # keep at least one training language
    held_out.append(code)
  return held_out


def split_sizes(n: int) -> dict[str, int]:
  """train/validation/test sizes of n utterances: 10 % each for evaluation, at least one."""
  if n < 3:
    return {"train": n, "validation": 0, "test": 0}
  evals = {s: max(1, round(n * f)) for s, f in SPLIT_FRACTIONS.items()}
  return {"train": n - sum(evals.values()), **evals}


def _assign_splits(items: list, held_out: bool) -> dict[str, list]:
  if held_out:  # never in train
    half = (len(items) + 1) // 2
    return {"train": [], "validation": items[:half], "test": items[half:]}
  sizes = split_sizes(len(items))
  out, start = {}, 0
  for split in records.SPLITS:
    out[split] = items[start:start + sizes[split]]
    start += sizes[split]
  return out


def _draw_sentences(lang: languages.Language, config: BuildConfig, want_paired: int, want_speech: int,
                    want_text: int) -> tuple[list[str], list[str], list[str]]:
  """Disjoint (paired, speech, text) sentences; speech ones are readable by the voice and have
  their numbers spelled out (text_sources.spell_numbers: a transcript says what is spoken; a
  sentence with digits in a language num2words cannot spell goes to the text stream). The two
  speech streams draw in turn, so that each gets sentences from the whole stream of the source."""
  speakable = text_sources.scripts_for(lang.script, speech=True)
  text_scripts = text_sources.scripts_for(lang.script) | speakable
  paired, speech, text = [], [], []
  for sentence in text_sources.iter_sentences(lang.code, config.seed, scripts=text_scripts,
                                              max_chars=config.max_text_chars):
    paired_open, speech_open = len(paired) < want_paired, len(speech) < want_speech
    spoken = text_sources.spell_numbers(sentence, lang.code) if paired_open or speech_open else ""
    if spoken and len(spoken) <= config.max_speech_chars and text_sources.in_scripts(spoken, speakable):
      (paired if paired_open and (len(paired) <= len(speech) or not speech_open) else speech).append(spoken)
    elif len(text) < want_text:
      text.append(sentence)
    if len(paired) >= want_paired and len(speech) >= want_speech and len(text) >= want_text:
      break
  return paired, speech, text


def _synthesize_items(lang: languages.Language, sentences: Sequence[tuple[int, str]], stream: str, split: str,
                      config: BuildConfig, counter: audio_lib.SkipCounter,
                      synthesize=espeak.synthesize) -> Iterable[audio_lib.RawItem]:
  """Speech for (index, sentence) pairs of one split: training voices for train, held-out voice
  variants (espeak.EVAL_VARIANTS) for validation and test."""
  rng = np.random.default_rng(
      [config.seed, int(hashlib.sha1(f"{lang.code}/{stream}/{split}".encode()).hexdigest()[:8], 16)])
  variants = espeak.TRAIN_VARIANTS if split == "train" else espeak.EVAL_VARIANTS
  # Every style is drawn before any clip is spoken, so the clips may be spoken side by side.
  styles = [espeak.sample_style(rng, lang.espeak_voices, variants) for _ in sentences]
  results = espeak.synthesize_all(synthesize, [(sentence, style) for (_, sentence), style in zip(sentences, styles)])
  for (i, sentence), style, result in zip(sentences, styles, results):
    item_id = f"{lang.code}-{stream}-{i:05d}"
    if isinstance(result, espeak.EspeakError):
      counter.skip(SYNTHESIS_FAILED, item_id, str(result))
      continue
    if not result.words:
      counter.skip(NO_WORD_TIMINGS, item_id, f"the voice gave no word events for {sentence[:40]!r}")
      continue
    yield audio_lib.RawItem(
        id=item_id, lang=lang.code, text=sentence, audio=result.audio, sample_rate=espeak.SAMPLE_RATE,
        extras={"voice": style.describe(), "words": list(result.words),
                "word_starts_ms": list(result.word_starts_ms), "word_ends_ms": list(result.word_ends_ms)})


def _speech_splits(lang, sentences, stream, held_out, config, counter, synthesize) -> dict[str, list]:
  """Sentences split first (so each split is spoken by its own voices), then synthesized and validated."""
  by_split = _assign_splits(list(enumerate(sentences)), held_out)
  return {split: list(audio_lib.validate_items(
              _synthesize_items(lang, items, stream, split, config, counter, synthesize), counter, config.max_seconds))
          for split, items in by_split.items()}


def _write_shards(out_dir: str, stream: str, lang: str, split: str,
                  utterances: Sequence[records.Utterance]) -> list[str]:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not utterances:
    return []
  count = max(1, math.ceil(len(utterances) / SHARD_SIZE))
  names = []
  for index in range(count):
    name = records.shard_name(stream, lang, split, index, count)
    path = os.path.join(out_dir, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
      for utt in utterances[index::count]:
        writer.write(records.to_example_bytes(utt))
    names.append(name)
  return names


def count_records(path: str) -> int:
  """Records of a TFRecord file, from its length headers alone (no payload is read); ValueError
  naming the file when it is truncated or not a TFRecord file."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  (gfile: local or remote paths)
  size = tf.io.gfile.stat(path).length
  count, offset = 0, 0
  with tf.io.gfile.GFile(path, "rb") as f:
    while offset < size:
      header = f.read(12)  # uint64 length, uint32 masked CRC of the length
      if len(header) < 12:
        raise ValueError(f"{path} is truncated: record {count} has an incomplete header at byte {offset} of {size}")
      length = int.from_bytes(header[:8], "little")
      end = offset + 12 + length + 4
      if end > size:
        raise ValueError(f"{path} is truncated: record {count} needs bytes up to {end} but the file has {size}"
                         " (rebuild the corpus or restore the file)")
      f.seek(end)
      offset, count = end, count + 1
  return count


def verify_corpus(corpus_dir: str, manifest: dict) -> None:
  """Checks every shard the manifest lists against it before anything trains on them: present, not
  truncated, holding the manifest's number of items. Raises FileNotFoundError / ValueError naming
  the file; a damaged corpus never crashes a run midway (and again after every resume)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if manifest.get("format") == FORMAT and not manifest.get("complete", True):
    raise ValueError(f"{os.path.join(corpus_dir, MANIFEST)}: the build of this corpus did not finish; "
                     f"run `mslam data build-builtin --out {corpus_dir}` again")
  for lang, entry in sorted(manifest.get("languages", {}).items()):
    for stream, splits in sorted(entry.get("streams", {}).items()):
      for split, stats in sorted(splits.items()):
        if not isinstance(stats, dict) or "shards" not in stats:
          continue
        want = int(stats.get("clips", stats.get("examples", 0)))
        paths = [os.path.join(corpus_dir, name) for name in stats["shards"]]
        for path in paths:
          if not tf.io.gfile.exists(path):
            raise FileNotFoundError(f"{path} is missing: {MANIFEST} lists it for {stream}/{lang}/{split} "
                                    "(rebuild the corpus or restore the file)")
        sizes, records = stats.get("shard_bytes"), stats.get("shard_records")
        if sizes is not None and records is not None:
          for path, size in zip(paths, sizes):
            actual = tf.io.gfile.stat(path).length
            if actual != size:
              raise ValueError(f"{path} has {actual} bytes, {MANIFEST} says {size}: the shard is "
                               f"{'truncated' if actual < size else 'altered'}; rebuild the corpus or restore it")
          counts = list(records)
        else:  # a manifest of an earlier release: walk the record headers
          counts = [count_records(path) for path in paths]
        if sum(counts) != want:
          raise ValueError(f"{stream}/{lang}/{split}: {MANIFEST} says {want} items but its shards hold "
                           f"{sum(counts)} ({', '.join(f'{p}: {n}' for p, n in zip(paths, counts))})")


def corpus_fingerprint(corpus_dir: str) -> dict:
  """What a run trained on, by content: {"manifest": hash, "vocabulary": hash} (the manifest without
  its build time; every file of vocab/). The same corpus moved elsewhere keeps its fingerprint; a
  rebuild with another vocabulary does not."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  path = os.path.join(corpus_dir, MANIFEST)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path} not found: {corpus_dir} is not a corpus directory")
  with tf.io.gfile.GFile(path, "rb") as f:
    manifest = json.loads(f.read())
  manifest.pop("build_seconds", None)
  vocab = hashlib.sha256()
  vocab_dir = os.path.join(corpus_dir, "vocab")
  for name in sorted(tf.io.gfile.listdir(vocab_dir)) if tf.io.gfile.isdir(vocab_dir) else []:
    with tf.io.gfile.GFile(os.path.join(vocab_dir, name), "rb") as f:
      vocab.update(name.encode() + b"\0" + f.read())
  return {"manifest": hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16],
          "vocabulary": vocab.hexdigest()[:16]}


def _stats(utterances: Sequence[records.Utterance]) -> dict:
  samples = sum(len(u.audio) for u in utterances)
  return {"clips": len(utterances), "characters": sum(len(u.text) for u in utterances),
          "hours": samples / records.SAMPLE_RATE / 3600.0}


def read_manifest(out_dir: str) -> dict | None:
  try:
    with open(os.path.join(out_dir, MANIFEST), encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _write_manifest(out_dir: str, manifest: dict) -> None:
  tmp = os.path.join(out_dir, MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(manifest, f, ensure_ascii=False, indent=1)
  os.replace(tmp, os.path.join(out_dir, MANIFEST))


# The files a build writes, by name (records.shard_name, the vocabulary's JSON file, the manifest);
# nothing else in the directory is ever touched.
_OWN_FILE = re.compile(r"^((speech|text|paired)/[^/]+/(train|validation|test)\.tfrecord-\d{5}-of-\d{5}"
                       r"|vocab/[^/]+\.json|" + re.escape(MANIFEST) + r"(\.tmp)?)$")


def _clear_previous_build(out_dir: str) -> None:
  """Makes `out_dir` ready for a build: creates it, or removes the files an earlier build of ours
  wrote there (its manifest says so), leaving anything else alone. Refuses a non-empty directory
  that holds no built-in corpus."""
  os.makedirs(out_dir, exist_ok=True)
  if not os.listdir(out_dir):
    return
  existing = read_manifest(out_dir)
  if not existing or existing.get("format") != FORMAT:
    raise FileExistsError(
        f"{out_dir} is not empty and holds no built-in corpus ({MANIFEST} of format {FORMAT}); "
        "build-builtin writes into a new or empty directory, or over a built-in corpus it made: "
        "choose another --out")
  removed = 0
  for root, dirs, names in os.walk(out_dir, topdown=False):
    for name in names:
      path = os.path.join(root, name)
      if _OWN_FILE.match(os.path.relpath(path, out_dir).replace(os.sep, "/")):
        os.remove(path)
        removed += 1
    if root != out_dir and not os.listdir(root):
      os.rmdir(root)
  logging.info("replacing the built-in corpus in %s (%d files of the earlier build removed)", out_dir, removed)


def _build_languages(out_dir, selected, held, config, counter, synthesize, progress):
  """Draws, synthesizes, validates, splits and writes every language; returns what the manifest needs."""
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  manifest_languages = {}
  vocab_texts: list[str] = []
  totals = collections.defaultdict(lambda: collections.defaultdict(collections.Counter))
  bar = tqdm(selected, desc="built-in corpus", unit="lang", disable=not progress, dynamic_ncols=True)
  for code in bar:
    lang = languages.get(code)
    bar.set_postfix_str(code)
    has_speech = "paired" in lang.streams
    want_paired = config.paired_per_language if has_speech else 0
    want_speech = config.per_language if has_speech else 0
    paired_texts, speech_texts, text_texts = _draw_sentences(lang, config, want_paired, want_speech,
                                                             config.text_per_language)
    if has_speech and (len(paired_texts) < want_paired or len(speech_texts) < want_speech):
      counter.skip(NOT_ENOUGH_TEXT, code, f"{len(paired_texts)} paired and {len(speech_texts)} speech "
                   f"sentences of {want_paired} and {want_speech} wanted")
    by_stream = {
        stream: _speech_splits(lang, texts, stream, stream == "paired" and code in held, config, counter,
                               synthesize)
        for stream, texts in (("paired", paired_texts), ("speech", speech_texts)) if texts}
    text_items = list(audio_lib.validate_items(
        (audio_lib.RawItem(id=f"{code}-text-{i:05d}", lang=code, text=t) for i, t in enumerate(text_texts)),
        counter, config.max_seconds))
    # What the phone-level objectives read (mslam_jax.data.phones).
    for item in text_items + [u for split in by_stream.get("paired", {}).values() for u in split]:
      item.phones = phones.phonemize(item.text, code)
    if text_items:
      by_stream["text"] = _assign_splits(text_items, held_out=False)
    entry = {"lang_id": languages.lang_id(code), "name": lang.name, "script": lang.script,
             "held_out": code in held, "streams": {}}
    for stream in records.STREAMS:
      if not any(by_stream.get(stream, {}).values()):
        continue
      splits = by_stream[stream]
      entry["streams"][stream] = {}
      for split in records.SPLITS:
        shard_files = _write_shards(out_dir, stream, code, split, splits[split])
        stats = _stats(splits[split])
        entry["streams"][stream][split] = {
            **stats, "shards": shard_files,
            "shard_bytes": [os.path.getsize(os.path.join(out_dir, n)) for n in shard_files],
            "shard_records": [len(splits[split][i::len(shard_files)]) for i in range(len(shard_files))]}
        totals[stream][split].update(stats)
        if split == "train" and stream in ("text", "paired"):
          vocab_texts.extend(u.text for u in splits[split])
    manifest_languages[code] = entry

  return manifest_languages, vocab_texts, totals


@gin.configurable(denylist=["out_dir"])
def build_builtin_corpus(out_dir: str, max_languages: int | None = SMALL_MAX_LANGUAGES,
                         per_language: int = SMALL_PER_LANGUAGE, seed: int = 0,
                         languages_: Sequence[str] | None = None,
                         held_out: Sequence[str] | None = None,
                         text_per_language: int | None = None, paired_per_language: int | None = None,
                         max_speech_chars: int = 160,
                         max_text_chars: int = 400, max_seconds: float = 20.0,
                         force: bool = False, progress: bool = True,
                         synthesize=None) -> dict:
  """Builds (or finds up to date) the built-in corpus in `out_dir`; returns its manifest.

  Args:
    out_dir: the corpus directory: new, empty, or a built-in corpus made here before (only the
      files of that build are replaced; anything else in it is left alone).
    max_languages: how many languages (held-out and core languages first); None for all.
    per_language: utterances per language in the speech stream, and in the paired one unless
      `paired_per_language` is given.
    seed: every random choice (sentences, speakers, language order) follows from it.
    languages_: explicit ISO 639-3 codes instead of a selection.
    held_out: explicit held-out languages (default: DEFAULT_HELD_OUT among the selection).
    text_per_language: utterances per language in the text stream (default `per_language`).
    paired_per_language: utterances per language in the paired stream (default `per_language`).
    max_speech_chars / max_text_chars: longest sentence for speech / text.
    max_seconds: longest clip; longer ones are skipped and counted.
    force: rebuild even when the manifest says the build is up to date.
    progress: show a tqdm bar.
    synthesize: the synthesizer (text, SpeakerStyle) -> espeak.Synthesis; default: an
      espeak.SynthesisPool, one eSpeak process per core (a crash of eSpeak costs one clip, counted,
      not the build).
  """
  start = time.time()
  if per_language < 1:
    raise ValueError(f"per_language must be >= 1, got {per_language} (flag --per-language)")
  if paired_per_language is not None and paired_per_language < 1:
    raise ValueError(f"paired_per_language must be >= 1, got {paired_per_language} (flag --paired-per-language)")
  counter = audio_lib.SkipCounter(logging.getLogger(__name__))
  selected = select_languages(max_languages, seed, languages_, counter)
  if not selected:
    raise ValueError("no language to build: check --max-languages / --languages")
  held = choose_held_out(selected, held_out)
  config = BuildConfig(languages=tuple(selected), held_out=tuple(held), per_language=per_language,
                       paired_per_language=paired_per_language or per_language,
                       text_per_language=text_per_language or per_language, seed=seed,
                       max_speech_chars=max_speech_chars, max_text_chars=max_text_chars,
                       max_seconds=max_seconds)
  digest = config_hash(config)
  existing = read_manifest(out_dir)
  if not force and existing and existing.get("config_hash") == digest and existing.get("complete"):
    logging.info("built-in corpus in %s is up to date (config %s); nothing to do", out_dir, digest)
    return existing

  _clear_previous_build(out_dir)
  # Marks the directory as a build of ours before any shard is written: an interrupted build is
  # recognized (and its files replaced) by the next one.
  _write_manifest(out_dir, {"format": FORMAT, "config_hash": digest, "complete": False})

  worker = None
  if synthesize is None:
    synthesize = worker = espeak.SynthesisPool()
  try:
    manifest_languages, vocab_texts, totals = _build_languages(
        out_dir, selected, held, config, counter, synthesize, progress)
  finally:
    if worker is not None:
      worker.close()
      if worker.restarts:
        logging.warning("the synthesizer process was restarted %d times", worker.restarts)

  from mslam_jax.data import vocabularies  # pylint: disable=g-import-not-at-top
  vocab = vocabularies.CharacterVocabulary.build(vocab_texts)
  vocab.save(os.path.join(out_dir, "vocab"))

  def count_streams(stream):
    return sorted(c for c, e in manifest_languages.items() if stream in e["streams"])

  manifest = {
      "format": FORMAT,
      "config_hash": digest,
      "config": dataclasses.asdict(config),
      "seed": seed,
      "sample_rate": records.SAMPLE_RATE,
      records.HELD_OUT_KEY: list(held),
      "held_out_policy": "paired data of held-out languages is only in validation/test",
      "languages": manifest_languages,
      "streams": {s: count_streams(s) for s in records.STREAMS},
      "totals": {s: {split: dict(v) for split, v in by_split.items()} for s, by_split in totals.items()},
      "skipped": dict(sorted(counter.skipped.items())),
      "repaired": dict(sorted(counter.repaired.items())),
      "skipped_examples": counter.as_dict()["examples"],
      "vocab": {"dir": "vocab", "size": vocab.vocab_size},
      "build_seconds": round(time.time() - start, 2),
      "complete": True,
  }
  _write_manifest(out_dir, manifest)
  logging.info("built-in corpus: %d languages (%d paired, %d held out) in %.1f s; %s",
               len(selected), len(manifest["streams"]["paired"]), len(held), time.time() - start,
               counter.summary())
  return manifest
