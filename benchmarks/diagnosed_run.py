"""What the scripts that diagnose one pre-training run share (retrieval_diagnosis.py,
zero_shot_probe.py): their flags for the run and its corpus, and the run loaded with its corpus."""


def add_flags(parser, model_help: str, per_lang_help: str) -> None:
  """--model_dir, --corpus_dir, --per-lang and --json."""
  parser.add_argument("--model_dir", required=True, help=model_help)
  parser.add_argument("--corpus_dir", default=None, help="default: the run's CORPUS_DIR")
  parser.add_argument("--per-lang", type=int, default=50, help=per_lang_help)
  parser.add_argument("--json", action="store_true")


def load(model_dir: str, corpus_dir: str | None = None):
  """(model, params, step, corpus_dir) of the run's latest checkpoint; the corpus defaults to the
  run's CORPUS_DIR, and a run that names none stops here."""
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  model, params, step = config.load_run(model_dir)
  corpus_dir = corpus_dir or config.macro("CORPUS_DIR")
  if not corpus_dir:
    raise SystemExit("the run names no CORPUS_DIR: pass --corpus_dir")
  return model, params, step, corpus_dir
