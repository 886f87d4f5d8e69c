"""`mslam align`: CTC forced alignment of a transcript to audio: JSON timestamps, TextGrid, PNG.

  mslam align --model_dir=/tmp/run/ctc AUDIO TEXT     (a `mslam finetune --out` directory)
"""
import argparse
import os
import sys

from mslam_jax.commands import common


def add_arguments(parser: argparse.ArgumentParser) -> None:
  common.add_flag(parser, "--model_dir", old=("--checkpoint",), required=True,
                  help="a `mslam finetune` output directory")
  parser.add_argument("audio", help="audio file (any rate; resampled to 16 kHz)")
  parser.add_argument("text", help="the transcript, or @FILE to read it from a file")
  parser.add_argument("--textgrid", default=None, help="write a Praat TextGrid here")
  parser.add_argument("--png", default=None, help="write the alignment over the spectrogram here")
  parser.add_argument("--lang", default=None,
                      help="the clip's language (ISO 639-3, e.g. deu), for a model with language vectors "
                           "(MSLAMEncoder.num_languages); `mslam data languages` lists the codes")
  parser.add_argument("--offsets", default=None,
                      help="word-boundary offsets to apply: an alignment_offsets.json that `mslam eval`'s "
                           "alignment evaluator fitted (eval/step_N/)")


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  from mslam_jax.data import audio as audio_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import languages  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import alignment  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import finetune_job  # pylint: disable=g-import-not-at-top
  if args.lang is not None:
    languages.lang_id(args.lang)  # an unknown code stops here (exit 2), before any model loads
  text = args.text
  if text.startswith("@"):
    with open(text[1:], encoding="utf-8") as f:
      text = f.read().strip()
  audio = audio_lib.read_user_audio(args.audio)  # a bad file is refused before any model loads
  offsets = alignment.BoundaryOffsets.load(args.offsets) if args.offsets else None
  tuned = finetune_job.load_finetuned(args.model_dir)
  result = alignment.align_utterances(tuned, [audio], [text], offsets,
                                      langs=None if args.lang is None else [args.lang])[0]
  if result is None:
    print("mslam align: the audio is too short for this transcript (no CTC path)", file=sys.stderr)
    return 1
  if args.textgrid:
    alignment.write_textgrid(args.textgrid, result.chars, result.words, result.duration_ms)
  if args.png:
    alignment.plot_alignment(args.png, audio, result.words, title=os.path.basename(args.audio))
  common.print_json({"audio": args.audio, "text": text, **result.to_dict()})
  return 0
