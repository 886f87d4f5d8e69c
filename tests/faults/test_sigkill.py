"""Six SIGKILLs of one stand-in run (three while a checkpoint is being written, three at other
points: during start-up and restore, right after the restore while the data position is set, and
mid-step): each restart resumes from the newest finished checkpoint, and the run ends bitwise equal
to an uninterrupted one (losses, parameters, data position)."""
import datetime
import json
import os
import random
import re
import signal
import time

import numpy as np
import pytest

from tests.trainer import helpers

pytestmark = pytest.mark.slow  # eight `mslam train` subprocesses

STEPS = 14
BINDINGS = ["SyntheticIterator.delay_s=0.2", "train.checkpoint_every=1", "train.keep_checkpoints=4"]
TMP = re.compile(r"^\d+\.orbax-checkpoint-tmp")


def _entries(model_dir):
  directory = os.path.join(model_dir, "checkpoints")
  return os.listdir(directory) if os.path.isdir(directory) else []


def _finished(model_dir):
  steps = [int(n) for n in _entries(model_dir) if n.isdigit()]
  return max(steps, default=None)


def _saving(model_dir):
  return [n for n in _entries(model_dir) if TMP.match(n)]


def _log(path):
  with open(path) as f:
    return f.read()


def _first_step_s(log_path, launched):
  """Seconds from the launch to the first step's checkpoint line of a run's log (its start-up:
  imports, compile, restore, one step)."""
  for line in _log(log_path).splitlines():
    if "Checkpoint at step" in line:
      return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp() - launched
  raise AssertionError("no checkpoint line in the log")


def _metric_lines(model_dir):
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.endswith("\n")]  # (not a line being written)


def _wait(condition, proc, timeout=120.0, poll=0.002):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if condition():
      return True
    if proc.poll() is not None:
      raise AssertionError(f"the run ended (rc={proc.returncode}) before the kill point")
    time.sleep(poll)
  raise AssertionError("kill point not reached")


def test_six_sigkills_resume_from_the_newest_finished_step_and_end_bitwise_equal(tmp_path):
  straight = str(tmp_path / "straight")
  done = helpers.run_training(straight, STEPS, BINDINGS[1:], timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]

  rng = random.Random(0)
  model_dir = str(tmp_path / "killed")
  kills, startup_s = [], None
  for attempt, point in enumerate(["save", "startup", "save", "after_restore", "save", "mid_step"]):
    resume_from = _finished(model_dir)
    log_path = str(tmp_path / f"launch_{attempt}.log")
    stale = set(_saving(model_dir))
    old_lines = len(_metric_lines(model_dir))  # earlier launches wrote steps past their checkpoints
    launched = time.time()
    proc = helpers.start_training(model_dir, STEPS, BINDINGS, log_path=log_path)
    try:
      if point == "save":  # a save newer than the one resumed from is being written
        # (`stale`: a killed save's leftover, removed at start-up)
        _wait(lambda: any(int(n.split(".")[0]) > (resume_from or 1) and n not in stale
                          for n in _saving(model_dir)), proc)
      elif point == "startup":  # imports, compile, restore: before the first new step (at the latest
        # when the restore is done, however slow this launch is next to the first one)
        deadline = time.time() + rng.uniform(0.5, startup_s)
        _wait(lambda: time.time() >= deadline or "Resuming from step" in _log(log_path), proc, poll=0.01)
      elif point == "after_restore":
        _wait(lambda: "Resuming from step" in _log(log_path), proc, poll=0.001)
      else:
        _wait(lambda: any(r["step"] > (resume_from or 0) + 1 for r in _metric_lines(model_dir)[old_lines:]),
              proc)
        time.sleep(rng.uniform(0.0, 0.2))
      saving_at_kill = _saving(model_dir)
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=30)
    finally:
      if proc.poll() is None:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, _log(log_path)[-3000:]
    if point == "save":
      assert set(saving_at_kill) - stale and set(_saving(model_dir)) - stale, "the kill missed the save"
    if attempt == 0:  # this machine's start-up time, now that the programs are in the cache
      startup_s = _first_step_s(log_path, launched)
    if resume_from is not None and point != "startup":
      assert f"Resuming from step {resume_from} " in _log(log_path), _log(log_path)[-3000:]
    kills.append((point, resume_from, _finished(model_dir)))
    assert _finished(model_dir) is not None and _finished(model_dir) < STEPS

  newest = _finished(model_dir)
  final = helpers.run_training(model_dir, STEPS, BINDINGS[1:], timeout=300)
  assert final.returncode == 0, final.stderr[-3000:]
  assert f"Resuming from step {newest} " in final.stderr
  assert not _saving(model_dir)  # the killed saves' leftovers were cleaned up
  assert len(kills) == 6 and sum(p == "save" for p, _, _ in kills) == 3

  want, got = helpers.read_metrics(straight), helpers.read_metrics(model_dir)
  assert sorted(got) == list(range(1, STEPS + 1))
  assert [got[s]["loss"] for s in range(1, STEPS + 1)] == [want[s]["loss"] for s in range(1, STEPS + 1)]
  np.testing.assert_equal(helpers.checkpoint_state(model_dir, STEPS), helpers.checkpoint_state(straight, STEPS))
  assert helpers.data_state(model_dir, STEPS) == helpers.data_state(straight, STEPS)
