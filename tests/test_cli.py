"""What a new user sees: quiet healthy runs, one-line messages for configuration mistakes."""
import os
import subprocess
import sys

import gin
import pytest

from mslam_jax import cli
from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_a_healthy_cpu_run_prints_no_error_looking_lines(builtin_corpus_dir):
  # show-batch loads TensorFlow and runs tf.data (TF probes CUDA at its first device use).
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "TF_CPP_MIN_LOG_LEVEL")}
  proc = subprocess.run([sys.executable, "-m", "mslam_jax.cli", "data", "show-batch", "--corpus_dir",
                         builtin_corpus_dir], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert "step 0" in proc.stdout
  for noise in conftest.LOAD_NOISE:
    assert noise not in proc.stderr, proc.stderr


@pytest.mark.parametrize("flags, expected", [
    (["--gin.MODEL_DIR=/tmp/run"], "a string value needs quotes, e.g. --gin.MODEL_DIR=\"'/tmp/run'\""),
    (["--gin.NoSuchThing.x=3"], "No configurable matching 'NoSuchThing'"),
    (["--gin_file=no/such.gin"], "gin file 'no/such.gin' not found"),
])
def test_configuration_mistakes_are_one_line_with_exit_2(capsys, flags, expected):
  rc = cli.main(["train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin"] + flags)
  err = capsys.readouterr().err
  assert rc == 2
  lines = [l for l in err.splitlines() if l.startswith("mslam train:")]
  assert len(lines) == 1 and expected in lines[0], err
  assert "Traceback" not in err


def test_a_command_without_its_gin_files_names_the_missing_bindings_with_exit_2(capsys):
  assert cli.main(["train"]) == 2
  err = capsys.readouterr().err
  assert "Traceback" not in err
  line = [l for l in err.splitlines() if l.startswith("mslam train:")][0]
  assert "Required bindings for `train` not provided in config" in line and "model_dir" in line


def test_an_in_process_call_leaves_sigpipe_to_the_caller(capsys):
  # Only the `mslam` process itself dies quietly on a closed pipe; a test session calling main()
  # must keep Python's BrokenPipeError (a dead worker's pipe would otherwise kill the session).
  import signal  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGPIPE)
  assert cli.main(["data", "languages", "--json"]) == 0
  assert capsys.readouterr().out.strip()
  assert signal.getsignal(signal.SIGPIPE) == before


def test_the_demo_table_shows_every_figure_with_its_reference():
  """`demo.results_table`: one row per figure the report holds, labels filled in (the duration window
  is retrieval's own), required figures shown as n/a when missing, references named."""
  from mslam_jax.commands import demo  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  table = demo.results_table({"retrieval_r1_speech_to_text": 0.5, "retrieval_chance_r1": 0.01,
                              "retrieval_r1_speech_to_text_similar_duration": 0.25})
  rows = {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("|")] for line in table.splitlines())}
  assert "{" not in table
  assert rows[f"retrieval R@1 speech->text, clips within {retrieval.DURATION_WINDOW_S:g} s"][0] == "0.25"
  assert rows["retrieval R@1 speech->text"] == ["0.5", "chance 0.01"]
  assert rows["CTC CER, training languages"][0] == "n/a"  # required: shown even when missing
  assert "CTC WER, training languages" not in rows  # optional: only when the report holds it
