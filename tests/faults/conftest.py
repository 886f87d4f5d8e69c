"""Fixtures of the fault-injection suite: a stand-in run trained in this process (its programs
compile once and land in the session's persistent compilation cache)."""
import contextlib
import io
import os
import shutil

import pytest

from tests.trainer import helpers

STANDIN_STEPS = 2


def run_cli(argv) -> tuple[int, str]:
  """`mslam ARGV` in this process: (exit code, what it wrote to stderr)."""
  import gin  # pylint: disable=g-import-not-at-top
  from mslam_jax import cli  # pylint: disable=g-import-not-at-top
  err = io.StringIO()
  gin.clear_config()
  try:
    with contextlib.redirect_stderr(err):
      try:
        rc = cli.main(list(argv))
      except SystemExit as e:  # argparse's own usage errors
        rc = e.code
  finally:
    gin.clear_config()
  return rc, err.getvalue()


def standin_train_args(model_dir: str, steps: int = STANDIN_STEPS, bindings=()) -> list[str]:
  return (["train", f"--gin_file={helpers.STANDIN_GIN}", f"--gin.MODEL_DIR='{model_dir}'",
           f"--gin.TRAIN_STEPS={steps}", "--gin.train.checkpoint_every=1",
           "--gin.train.async_checkpoints=False"] + [f"--gin.{b}" for b in bindings])


@pytest.fixture(scope="session")
def standin_run(tmp_path_factory) -> str:
  """The stand-in config trained STANDIN_STEPS steps (a checkpoint at each), once per session; read-only."""
  model_dir = str(tmp_path_factory.mktemp("standin_run"))
  rc, err = run_cli(standin_train_args(model_dir))
  assert rc == 0, err[-3000:]
  return model_dir


@pytest.fixture
def standin_copy(standin_run, tmp_path) -> str:
  """A private copy of `standin_run` that a test may resume, damage or refuse."""
  target = str(tmp_path / "run")
  shutil.copytree(standin_run, target)
  return target


def user_error_line(err: str, command: str) -> str:
  """The one `mslam COMMAND: ...` line of a user error; fails on a traceback."""
  assert "Traceback" not in err, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith(f"mslam {command}: ")]
  assert len(lines) == 1, err[-3000:]
  return lines[0]


def file_listing(directory: str) -> dict[str, int]:
  return {os.path.relpath(os.path.join(root, name), directory): os.path.getsize(os.path.join(root, name))
          for root, _, names in os.walk(directory) for name in names}
