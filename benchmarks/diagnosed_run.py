"""What the scripts that diagnose one pre-training run share (retrieval_diagnosis.py,
zero_shot_probe.py): their flags for the run and its corpus, and the run loaded with its corpus."""
import sys


def add_flags(parser, model_help: str, per_lang_help: str) -> None:
  """--model_dir, --corpus_dir, --per-lang and --json."""
  parser.add_argument("--model_dir", required=True, help=model_help)
  parser.add_argument("--corpus_dir", default=None, help="default: the run's CORPUS_DIR")
  parser.add_argument("--per-lang", type=int, default=50, help=per_lang_help)
  parser.add_argument("--json", action="store_true")


def refuse(message: str) -> None:
  """Exit 2 with `message` on stderr, as a command refuses a bad flag."""
  print(message, file=sys.stderr)
  raise SystemExit(2)


def load(model_dir: str, corpus_dir: str | None = None):
  """(model, params, step, corpus_dir) of the run's latest checkpoint; the corpus defaults to the
  run's CORPUS_DIR. A run that names none, or a corpus whose vocabulary is not the one the run was
  trained on (its token ids would mean other characters), stops here with exit 2. TensorFlow, which
  reading the run and its corpus loads, loads quietly, as in a command."""
  from mslam_jax import checkpoints, cli, config  # pylint: disable=g-import-not-at-top
  cli.import_tensorflow_quietly()
  model, params, step = config.load_run(model_dir)
  corpus_dir = corpus_dir or config.macro("CORPUS_DIR")
  if not corpus_dir:
    refuse("the run names no CORPUS_DIR: pass --corpus_dir")
  try:
    checkpoints.check_corpus(checkpoints.step_dir(model_dir, step), corpus_dir, model_dir)
  except ValueError as e:
    refuse(str(e))
  return model, params, step, corpus_dir
