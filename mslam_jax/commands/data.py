"""`mslam data ...`: build and inspect corpora.

Sub-commands are registered in `SUBCOMMANDS` (name -> (add_arguments, run, help)); a new one is a
pair of functions and one line there.
"""
import argparse
import json
import sys
from typing import Callable

from mslam_jax.commands import common


def _add_languages(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--json", action="store_true", help="a JSON list of objects instead of a table")
  parser.add_argument("--stream", choices=("speech", "text", "paired"), default=None,
                      help="only languages whose built-in corpus has this stream")
  parser.add_argument("--inventory", action="store_true",
                      help="the pinned inventory of outside corpora (FLEURS, mC4, Common Voice, MLS, VoxPopuli, "
                           "BABEL, SeamlessM4T) instead of the registry")


def _with_inventory(entry: dict) -> dict:
  """A registry entry plus the outside corpora that have the language (from the pinned inventory)."""
  from mslam_jax.data import inventory  # pylint: disable=g-import-not-at-top
  try:
    pinned = inventory.get(entry["code"])
  except inventory.InventoryError:
    return {**entry, "inventory_id": None}
  return {**entry, "inventory_id": pinned.id, "corpora": {**entry.get("corpora", {}), **pinned.to_json()["corpora"]}}


def _run_languages(args: argparse.Namespace) -> int:
  from mslam_jax.data import inventory  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import languages  # pylint: disable=g-import-not-at-top
  if args.inventory:
    entries = [e.to_json() for e in inventory.entries()]
    if args.json:
      json.dump(entries, sys.stdout, ensure_ascii=False, indent=1)
      sys.stdout.write("\n")
      return 0
    for e in entries:
      corpora = " ".join(c + ":" + ",".join(v) for c, v in e["corpora"].items())
      print(f"{e['id']:>4}  {e['code']}  {e['bcp47']:<4} {e['script']}  {e['name']:<28} {corpora}")
    print(f"\n{len(entries)} languages, {sum(e['speech'] for e in entries)} with speech ({inventory.TABLE})")
    return 0
  langs = languages.with_stream(args.stream) if args.stream else languages.all_languages()
  if args.json:
    json.dump([_with_inventory(l.to_json()) for l in langs], sys.stdout, ensure_ascii=False, indent=1)
    sys.stdout.write("\n")
    return 0
  print(languages.format_table(langs))
  counts = {s: len(languages.with_stream(s)) for s in languages.STREAMS}
  print(f"\n{len(langs)} languages; built-in streams: {counts['text']} text, "
        f"{counts['speech']} speech, {counts['paired']} paired")
  return 0


def _add_build_builtin(parser: argparse.ArgumentParser) -> None:
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  parser.add_argument("--out", required=True, help="corpus directory to write")
  parser.add_argument("--max-languages", type=int, default=builtin_corpus.SMALL_MAX_LANGUAGES,
                      help="how many languages (0 = all; held-out and core languages first)")
  parser.add_argument("--per-language", type=int, default=builtin_corpus.SMALL_PER_LANGUAGE,
                      help="utterances per language in each of the speech, paired and text streams")
  parser.add_argument("--paired-per-language", type=int, default=None,
                      help="utterances per language in the paired stream (default: --per-language)")
  parser.add_argument("--text-per-language", type=int, default=None,
                      help="utterances per language in the text stream (default: --per-language)")
  parser.add_argument("--seed", type=int, default=0, help="every random choice of the build follows from it")
  parser.add_argument("--languages", default=None, help="comma-separated ISO 639-3 codes instead of a selection")
  parser.add_argument("--held-out", default=None, help="comma-separated held-out languages (default: built-in list)")
  parser.add_argument("--force", action="store_true", help="rebuild even if the manifest is up to date")
  config.add_gin_arguments(parser)


def _codes(value: str | None):
  return None if value is None else [c.strip() for c in value.split(",") if c.strip()]


def _run_build_builtin(args: argparse.Namespace) -> int:
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  config.parse_gin(args.gin_file, getattr(args, "gin_bindings", []), args.gin_search_path)
  manifest = builtin_corpus.build_builtin_corpus(
      args.out, max_languages=args.max_languages or None, per_language=args.per_language,
      seed=args.seed, languages_=_codes(args.languages), held_out=_codes(args.held_out),
      text_per_language=args.text_per_language, paired_per_language=args.paired_per_language, force=args.force)
  config.log_operative_config(None)
  streams = manifest["streams"]
  print(f"{args.out}: {len(manifest['languages'])} languages ({len(streams['text'])} text, "
        f"{len(streams['speech'])} speech, {len(streams['paired'])} paired); held out: "
        f"{', '.join(manifest['held_out_languages']) or 'none'}; skipped: {manifest['skipped'] or 'none'}; "
        f"vocabulary {manifest['vocab']['size']} ids; built in {manifest['build_seconds']} s")
  return 0


def _add_show_batch(parser: argparse.ArgumentParser) -> None:
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  from mslam_jax.commands import common  # pylint: disable=g-import-not-at-top
  common.add_flag(parser, "--corpus_dir", old=("--corpus",), required=True,
                  help="a corpus directory written by `mslam data build-builtin`")
  parser.add_argument("--steps", type=int, default=1, help="how many step batches to describe")
  config.add_gin_arguments(parser)


def _run_show_batch(args: argparse.Namespace) -> int:
  from mslam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  iterator = pipeline.builtin_step_iterator(args.corpus_dir, getattr(args, "gin_bindings", []))
  for step in range(args.steps):
    print(f"step {step}\n{pipeline.describe_batch(next(iterator))}")
  return 0


def _add_prepare(parser: argparse.ArgumentParser) -> None:
  from mslam_jax.data import corpora  # pylint: disable=g-import-not-at-top
  parser.add_argument("--corpus", required=True, choices=corpora.names(), help="which corpus's release layout")
  parser.add_argument("--root", required=True, help="the corpus's directory as released (extracted)")
  parser.add_argument("--out", required=True, help="prepared corpus directory to write (or resume)")
  parser.add_argument("--languages", nargs="+", default=None,
                      help="only these languages (the corpus's own codes or ISO 639-3; commas work too)")
  parser.add_argument("--streams", nargs="+", default=None, choices=("speech", "text", "paired"),
                      help="which streams to write (default: the corpus's own)")
  parser.add_argument("--max-hours-per-language", type=float, default=None,
                      help="cap of training hours per language and stream (a fixed pseudo-random subset)")
  parser.add_argument("--max-clip-seconds", type=float, default=30.0,
                      help="longer unlabeled audio is cut into clips of at most this; longer labeled clips are skipped")
  parser.add_argument("--shard-size", type=int, default=1000, help="records per shard (the unit of work and resume)")
  parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                      help="a reader option, e.g. subset=9hr (mls), cv_root=DIR (covost2), language=fr (hf_parquet)")
  parser.add_argument("--runner", default="DirectRunner", help="Apache Beam runner (DataflowRunner, FlinkRunner, ...)")
  parser.add_argument("--pipeline_option", action="append", default=[], metavar="--FLAG=VALUE",
                      help="passed to Beam's PipelineOptions, e.g. --pipeline_option=--direct_num_workers=2")


def _run_prepare(args: argparse.Namespace) -> int:
  from mslam_jax.data.corpora import prepare  # pylint: disable=g-import-not-at-top
  options = {}
  for item in args.option:
    key, sep, value = item.partition("=")
    if not sep or not key:
      raise ValueError(f"--option {item!r} is not KEY=VALUE")
    options[key] = value
  languages = [c for v in args.languages or () for c in _codes(v)] or None
  manifest = prepare.prepare(args.corpus, args.root, args.out, languages=languages, streams=args.streams,
                             max_hours_per_language=args.max_hours_per_language, runner=args.runner,
                             pipeline_options=args.pipeline_option, options=options, shard_size=args.shard_size,
                             max_clip_seconds=args.max_clip_seconds)
  totals = "; ".join(f"{s}: " + ", ".join(f"{sp} {v['clips']} clips {v['hours']:.2f} h" for sp, v in by.items())
                     for s, by in manifest["totals"].items())
  print(f"{args.out}: {len(manifest['languages'])} languages; {totals}; skipped: {manifest['skipped'] or 'none'}; "
        f"vocabulary {manifest['vocab']['size']} ids; {manifest['prepare_seconds']} s")
  return 0


# name -> (add_arguments, run, help)
SUBCOMMANDS: dict[str, tuple[Callable, Callable, str]] = {
    "languages": (_add_languages, _run_languages, "the language registry (table or --json)"),
    "build-builtin": (_add_build_builtin, _run_build_builtin,
                      "build the offline built-in corpus (CLDR text + eSpeak NG speech)"),
    "prepare": (_add_prepare, _run_prepare,
                "prepare an outside corpus (FLEURS, Common Voice, MLS, ...) into training shards, on Apache Beam"),
    "show-batch": (_add_show_batch, _run_show_batch,
                   "one training step's batch of the built-in corpus: keys, shapes, dtypes, languages"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
  sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
  for name, (add, _, help_text) in SUBCOMMANDS.items():
    add(sub.add_parser(name, help=help_text, description=help_text))


def run(args: argparse.Namespace) -> int:
  common.setup_logging(quiet_absl=False)
  _, run_fn, _ = SUBCOMMANDS[args.data_command]
  return int(run_fn(args) or 0)
