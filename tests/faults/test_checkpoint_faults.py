"""Signals save a checkpoint at the last logged step; a damaged latest checkpoint is set aside and
the run falls back to the previous one, saying so, and ends bitwise equal to an undamaged run."""
import glob
import logging
import os
import signal
import threading
import time

import numpy as np
import pytest

from tests.faults.conftest import STANDIN_STEPS, run_cli, standin_train_args
from tests.trainer import helpers

FINAL = STANDIN_STEPS + 1


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> str:
  """The stand-in run trained FINAL steps without interruption."""
  model_dir = str(tmp_path_factory.mktemp("straight"))
  rc, err = run_cli(standin_train_args(model_dir, steps=FINAL))
  assert rc == 0, err[-3000:]
  return model_dir


def _truncate_array_data(step_dir):
  # Every data file: which of OCDBT's files holds the arrays (and which only superseded or index
  # data) depends on the state's size and on Orbax's merge of per-process files.
  files = glob.glob(os.path.join(step_dir, "state", "ocdbt.process_*", "d", "*"))
  files += glob.glob(os.path.join(step_dir, "state", "d", "*"))
  assert files
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


def _garble_data_state(step_dir):
  with open(os.path.join(step_dir, "data_state", "process_0.json"), "w") as f:
    f.write('{"kind": "json", "val')


def _delete_state_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


DAMAGE = {"truncated_array_data": _truncate_array_data, "garbled_data_state": _garble_data_state,
          "deleted_state_metadata": _delete_state_metadata}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_previous(standin_copy, straight_run, damage, caplog):
  caplog.set_level(logging.INFO)
  latest = os.path.join(standin_copy, "checkpoints", str(STANDIN_STEPS))
  DAMAGE[damage](latest)
  rc, err = run_cli(standin_train_args(standin_copy, steps=FINAL))
  assert rc == 0, err[-3000:]
  said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
          and f"Checkpoint {STANDIN_STEPS} in" in r.getMessage()]
  assert len(said) == 1 and f"falling back to checkpoint {STANDIN_STEPS - 1}" in said[0], said
  assert any(f"Resuming from step {STANDIN_STEPS - 1}" in r.getMessage() for r in caplog.records)
  # The damaged one is kept aside for a post-mortem; the run redid its step.
  assert os.path.isdir(os.path.join(standin_copy, "checkpoints_damaged", str(STANDIN_STEPS)))
  assert helpers.checkpoint_steps(standin_copy)[-1] == FINAL
  np.testing.assert_equal(helpers.checkpoint_state(standin_copy, FINAL),
                          helpers.checkpoint_state(straight_run, FINAL))
  got, want = helpers.read_metrics(standin_copy), helpers.read_metrics(straight_run)
  assert [got[s]["loss"] for s in range(1, FINAL + 1)] == [want[s]["loss"] for s in range(1, FINAL + 1)]


def test_every_checkpoint_damaged_starts_over_saying_so(standin_copy, caplog):
  caplog.set_level(logging.INFO)
  for step in helpers.checkpoint_steps(standin_copy):
    _delete_state_metadata(os.path.join(standin_copy, "checkpoints", str(step)))
  rc, err = run_cli(standin_train_args(standin_copy, steps=1))
  assert rc == 0, err[-3000:]
  assert any("no older checkpoint is left" in r.getMessage() for r in caplog.records)
  assert helpers.checkpoint_steps(standin_copy) == [1]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP],
                         ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_saves_at_the_last_logged_step(tmp_path, signum):
  model_dir = str(tmp_path / "run")
  stop = threading.Event()

  def signal_after_step_2():
    while not stop.is_set():
      if max(helpers.read_metrics(model_dir), default=0) >= 2:
        os.kill(os.getpid(), signum)
        return
      time.sleep(0.01)

  previous = signal.getsignal(signum)
  thread = threading.Thread(target=signal_after_step_2, daemon=True)
  thread.start()
  try:
    rc, err = run_cli(standin_train_args(model_dir, steps=200, bindings=["SyntheticIterator.delay_s=0.05",
                                                                            "train.checkpoint_every=50"]))
  finally:
    stop.set()
    thread.join()
  assert rc == 0, err[-3000:]
  assert signal.getsignal(signum) == previous  # the run put the handler back
  last_logged = max(helpers.read_metrics(model_dir))
  assert 2 <= last_logged < 200
  assert helpers.checkpoint_steps(model_dir)[-1] == last_logged
  assert int(helpers.checkpoint_state(model_dir, last_logged)["step"]) == last_logged
