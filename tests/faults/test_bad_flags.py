"""Bad flags and configs end with one line `mslam COMMAND: ...` and exit 2, never a traceback; a
resume refuses a config its checkpoint cannot serve (naming the field) and warns about changed
optimizer settings (naming old and new values)."""
import logging
import os

import pytest

from tests.faults.conftest import file_listing, run_cli, standin_train_args, user_error_line
from tests.trainer import helpers

GIN = f"--gin_file={helpers.STANDIN_GIN}"


@pytest.mark.parametrize("flags, says", [
    (["--gin.MODEL_DIR=/tmp/run", "--gin.TRAIN_STEPS=2"], "MODEL_DIR"),
    (["--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=abc"], "TRAIN_STEPS"),
    (["--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=0"], "train_steps"),
    (["--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=-3"], "train_steps"),
    (["--gin.MODEL_DIR='{d}'"], "TRAIN_STEPS"),
    (["--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=2", "--gin.train.checkpoint_every=0"], "checkpoint_every"),
    (["--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=2", "--gin.StandInModel.no_such_field=1"], "no_such_field"),
    (["--gin.MODEL_DIR='{d}'", "--gin.TRAIN_STEPS=2", "--gin_file=no/such/file.gin"], "no/such/file.gin"),
])
def test_bad_train_flags_exit_2_with_one_line(tmp_path, flags, says):
  model_dir = str(tmp_path / "run")
  rc, err = run_cli(["train", GIN] + [f.format(d=model_dir) for f in flags])
  assert rc == 2, err[-2000:]
  assert says in user_error_line(err, "train")
  assert not os.path.exists(os.path.join(model_dir, "checkpoints"))


def test_unknown_evaluator_exits_2_with_one_line(tmp_path):
  config = tmp_path / "with_evaluator.gin"
  config.write_text(f"include '{helpers.STANDIN_GIN}'\nimport mslam_jax.evaluation.registry\n"
                    "train.evaluators = @build_evaluators()\nbuild_evaluators.names = ['no_such_evaluator']\n")
  rc, err = run_cli(["train", f"--gin_file={config}", f"--gin.MODEL_DIR='{tmp_path / 'run'}'",
                     "--gin.TRAIN_STEPS=2"])
  assert rc == 2
  line = user_error_line(err, "train")
  assert "unknown evaluator 'no_such_evaluator'" in line and "retrieval" in line


def test_the_train_module_docstring_example_parses():
  """The command the module documents must at least get past gin (the tiny model and run config)."""
  from mslam_jax import config, train  # pylint: disable=g-import-not-at-top
  lines = [l.strip().rstrip("\\").strip() for l in train.__doc__.splitlines()[2:4]]
  args = " ".join(lines).split()
  assert args[:2] == ["mslam", "train"]
  files = [a.split("=", 1)[1] for a in args if a.startswith("--gin_file=")]
  bindings = [a[len("--gin."):].replace('"', "") for a in args if a.startswith("--gin.")]
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    config.parse_gin(files, bindings)
    assert config.macro("MODEL_DIR") == "/tmp/run"
    assert config.required_macros_unset() == []
  finally:
    gin.clear_config()


# -- resume ------------------------------------------------------------------------------------

REFUSED = [  # binding -> what the refusal names
    ("StandInModel.dim=32", "StandInModel.dim"),
    ("StandInModel.mlp=64", "StandInModel.mlp"),
    ("StandInModel.vocab=64", "StandInModel.vocab"),
    ("StandInModel.frame=8", "StandInModel.frame"),
    ("make_optimizer.name='adafactor'", "make_optimizer.name"),
    ("SPEECH_BATCH=4", "SPEECH_BATCH"),
    ("SyntheticIterator.seed=1", "seed"),
]


@pytest.mark.parametrize("binding, field", REFUSED, ids=[b for b, _ in REFUSED])
def test_resume_refuses_an_incompatible_config_naming_the_field(standin_copy, binding, field):
  before = file_listing(standin_copy)
  operative = open(os.path.join(standin_copy, "operative_config.gin")).read()
  rc, err = run_cli(standin_train_args(standin_copy, steps=4, bindings=[binding]))
  assert rc == 2, err[-2000:]
  line = user_error_line(err, "train")
  assert "cannot resume" in line and field in line, line
  # Nothing of the run changed: no checkpoint, no metrics line, the run's config kept.
  assert file_listing(standin_copy) == before
  assert open(os.path.join(standin_copy, "operative_config.gin")).read() == operative


def test_resume_allows_more_steps_and_warns_about_a_changed_learning_rate(standin_copy, caplog):
  caplog.set_level(logging.INFO)
  rc, err = run_cli(standin_train_args(standin_copy, steps=3))  # more steps: silently allowed
  assert rc == 0, err[-2000:]
  assert not [r for r in caplog.records if "changed" in r.getMessage()]
  caplog.clear()
  rc, err = run_cli(standin_train_args(standin_copy, steps=4,
                                       bindings=["make_optimizer.peak_learning_rate=5.0"]))
  assert rc == 0, err[-2000:]
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
              and "optimizer settings" in r.getMessage()]
  assert len(warnings) == 1 and "make_optimizer.peak_learning_rate: 0.01 -> 5.0" in warnings[0], warnings
  assert helpers.checkpoint_steps(standin_copy)[-1] == 4


@pytest.mark.slow
def test_real_pipeline_resume_refuses_a_changed_batch_and_another_corpus(tiny_run, builtin_corpus_dir, tmp_path):
  """The tiny model on the built-in corpus: a changed SPEECH_BATCH, or another build of the corpus,
  changes the data fingerprint; the resume is refused naming it, and nothing of the run changes."""
  import shutil  # pylint: disable=g-import-not-at-top
  from tests.conftest import tiny_train_args  # pylint: disable=g-import-not-at-top
  run = str(tmp_path / "run")
  shutil.copytree(tiny_run, run)
  other = str(tmp_path / "other_corpus")
  shutil.copytree(builtin_corpus_dir, other)
  with open(os.path.join(other, "vocab", "characters.json"), "a") as f:
    f.write("\n")  # another build's vocabulary file
  before = file_listing(run)
  for argv, named in ((tiny_train_args(run, builtin_corpus_dir, steps=5) + ["--gin.SPEECH_BATCH=4"], "SPEECH_BATCH"),
                      (tiny_train_args(run, other, steps=5), "corpus")):
    rc, err = run_cli(argv)
    assert rc == 2, err[-3000:]
    line = user_error_line(err, "train")
    assert "cannot resume" in line and named in line, line
    assert file_listing(run) == before
