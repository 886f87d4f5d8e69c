"""`mslam transcribe`: speech to text with a fine-tuned CTC head.

  mslam transcribe --model_dir=/tmp/run/ctc [--lang=deu] [--beam=8] [--corpus_dir=DIR] AUDIO...

Greedy decoding by default; `--beam N` searches N prefixes. With `--corpus_dir`, each clip's
language's character LM (of the corpus' train text) is fused into the beam search, with the fusion
weights saved in the head's directory: those `mslam eval` tuned, or tuned here on the paired
validation clips of the head's own languages and saved. `--timestamps` adds word times (the
transcript force-aligned to its clip). A file that cannot be read is named, skipped and counted;
the rest are transcribed.
"""
import argparse
import json
import logging
import sys

from mslam_jax import storage
from mslam_jax.commands import common

DEFAULT_LM_BEAM = 8  # the evaluators' beam, whose fusion weights a head's directory may already hold


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_flag(parser, "--model_dir", required=True,
                  help="a `mslam finetune --task ctc` output directory, or an evaluator's head "
                       "(RUN/finetune/ctc_step<N>_<hash>)")
  parser.add_argument("audio", nargs="+", help="audio files (any rate; resampled to 16 kHz)")
  parser.add_argument("--lang", default=None,
                      help="the clips' language (ISO 639-3, e.g. deu): the LM's language, and the encoder's "
                           "language vectors where the model has them; `mslam data languages` lists the codes")
  parser.add_argument("--beam", type=int, default=None,
                      help=f"prefix beam search over this many hypotheses (default: greedy; {DEFAULT_LM_BEAM} "
                           "with --corpus_dir)")
  common.add_flag(parser, "--corpus_dir", default=None,
                  help="fuse in the character LM of this corpus' train text (e.g. the corpus the head was "
                       "fine-tuned on)")
  parser.add_argument("--lm_order", type=int, default=6, help="the character LM's n-gram order")
  parser.add_argument("--timestamps", action="store_true",
                      help="word start and end times: the transcript force-aligned to its clip")
  common.add_flag(parser, "--out", default=None,
                  help="also write one JSON line a transcribed file here (a local path or a URI, e.g. gs://...)")


def _decoding(args: argparse.Namespace) -> tuple[int, str]:
  """(beam size, its name); a bad combination stops here (exit 2), before any model loads."""
  beam = args.beam if args.beam is not None else (DEFAULT_LM_BEAM if args.corpus_dir else 0)
  if beam < 0:
    raise ValueError(f"--beam={beam}: give 0 (greedy) or a beam size")
  if args.corpus_dir and beam == 0:
    raise ValueError("--corpus_dir fuses a character LM into beam search: give --beam >= 1")
  if args.corpus_dir and args.lm_order < 1:
    raise ValueError(f"--lm_order={args.lm_order}: the LM needs an order >= 1")
  return beam, ("beam search with a character LM" if args.corpus_dir else "beam search" if beam else "greedy")


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  from mslam_jax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import languages  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import alignment  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import finetune_job  # pylint: disable=g-import-not-at-top
  beam, decoding = _decoding(args)
  if args.lang is not None:
    languages.lang_id(args.lang)  # an unknown code stops here (exit 2), before any model loads
  files, audios, skipped = [], [], []
  for path in args.audio:
    try:
      audios.append(audio_lib.read_user_audio(path))
      files.append(path)
    except (ValueError, FileNotFoundError) as e:
      logging.warning("skipped: %s", e)
      skipped.append({"file": path, "reason": str(e)})
  if not audios:
    print(f"mslam transcribe: none of the {len(skipped)} files could be read", file=sys.stderr)
    return 1
  tuned = finetune_job.load_finetuned(args.model_dir)
  lms = None
  if args.corpus_dir:
    tune_langs = list(tuned.langs) or eval_data.corpus_languages(args.corpus_dir, "paired", "validation")
    lms = finetune_job.ctc_language_models(None, args.corpus_dir, tuned, tune_langs, args.lm_order, beam_size=beam)
    if lms is None:
      decoding = "beam search"  # the corpus holds no train text (logged)
  langs = None if args.lang is None else [args.lang] * len(audios)
  texts, log_probs = [], []
  for text, lp in tuned.transcriptions(audios, langs, beam, lms, progress="transcribing"):
    texts.append(text)
    if args.timestamps:  # kept for the alignment, which then needs no second pass of the encoder
      log_probs.append(lp)
  aligned = alignment.align_utterances(tuned, audios, texts, log_probs=log_probs) if args.timestamps else None
  results = []
  for i, (path, audio, text) in enumerate(zip(files, audios, texts)):
    result = {"file": path, "text": text, "seconds": round(len(audio) / audio_lib.SAMPLE_RATE, 3)}
    if aligned is not None:  # None: no CTC path for this text (e.g. an empty transcript)
      result["words"] = [] if aligned[i] is None else aligned[i].to_dict()["words"]
    results.append(result)
  if args.out:  # a local path or a URI (gs://...), as every other output of the project
    storage.write_text(args.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
  common.print_json({"decoding": decoding, "beam_size": beam, "language": args.lang, "results": results,
                     "skipped": skipped})
  return 0
