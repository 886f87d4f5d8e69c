"""Exact resume after SIGKILL, checkpoint on SIGTERM, non-finite losses skipped and counted.

Each run is a `mslam train` subprocess on the stand-in config; they share the session's
persistent compilation cache, so only the first run of each program pays for its compile.
"""
import json
import os
import signal

import jax
import numpy as np
import pytest

from tests.trainer import helpers

pytestmark = pytest.mark.slow  # end-to-end: subprocesses that compile and train

STEPS = 8
SLOW = ["SyntheticIterator.delay_s = 0.25", "train.checkpoint_every = 2"]


def _params(model_dir, step):
  return helpers.checkpoint_state(model_dir, step)["params"]


def test_sigkill_then_restart_reproduces_the_uninterrupted_run(tmp_path):
  straight = str(tmp_path / "straight")
  done = helpers.run_training(straight, STEPS, SLOW[1:])
  assert done.returncode == 0, done.stderr[-3000:]

  killed = str(tmp_path / "killed")
  proc = helpers.start_training(killed, STEPS, SLOW)
  helpers.wait_for_step(killed, 5, proc)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=30)
  assert proc.returncode == -signal.SIGKILL
  saved = helpers.checkpoint_steps(killed)
  assert saved and max(saved) < STEPS, saved  # killed mid-run, with a checkpoint behind it

  resumed = helpers.run_training(killed, STEPS, SLOW[1:])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"Resuming from step {max(saved)}" in resumed.stderr

  want, got = helpers.read_metrics(straight), helpers.read_metrics(killed)
  assert sorted(got) == list(range(1, STEPS + 1))
  # Bitwise on CPU: same program, same inputs, same restored bits (XLA CPU is deterministic).
  assert [got[s]["loss"] for s in got] == [want[s]["loss"] for s in want]
  np.testing.assert_equal(_params(killed, STEPS), _params(straight, STEPS))
  assert helpers.data_state(killed, STEPS) == helpers.data_state(straight, STEPS)


def test_sigterm_saves_a_restorable_checkpoint_and_exits_cleanly(tmp_path):
  model_dir = str(tmp_path / "preempted")
  proc = helpers.start_training(model_dir, 1000, SLOW)
  helpers.wait_for_step(model_dir, 3, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 0
  with open(model_dir + ".log") as f:
    log = f.read()
  assert '"stopped": "preempted"' in log
  last = max(helpers.checkpoint_steps(model_dir))
  assert 3 <= last < 1000
  state = helpers.checkpoint_state(model_dir, last)
  assert int(state["step"]) == last
  assert helpers.data_state(model_dir, last)["position"] == last
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))
  # The metrics' last step is the checkpoint's step: nothing trained after the save.
  assert max(helpers.read_metrics(model_dir)) == last


def test_nonfinite_skipped_and_counted_k_in_a_row_stop_the_run_evaluators_run(tmp_path):
  model_dir = str(tmp_path / "nan")
  # Batches 2 and 4, 5, 6 (0-based) carry a NaN sample: step 3 is skipped alone, steps 5-7 in a row.
  run = helpers.run_training(
      model_dir, 20, ["SyntheticIterator.nan_at = [2, 4, 5, 6]",
                      "train.max_consecutive_nonfinite = 3", "train.checkpoint_every = 1",
                      "train.keep_checkpoints = 10", "train.eval_every = 2",
                      "train.evaluators = [@ParamNormEvaluator(), @BrokenEvaluator()]"])
  assert run.returncode == 3, run.stderr[-3000:]
  assert "3 non-finite losses in a row up to step 7" in run.stderr
  metrics = helpers.read_metrics(model_dir)
  assert [s for s in metrics if metrics[s]["nonfinite"]] == [3, 5, 6, 7]
  assert np.isnan(metrics[3]["loss"])
  # A skipped step leaves the parameters as they were; the next finite step trains again.
  assert metrics[3]["param_norm"] == metrics[2]["param_norm"]
  assert metrics[4]["param_norm"] != metrics[3]["param_norm"]
  assert metrics[7]["nonfinite_count"] == 4 and metrics[4]["nonfinite_streak"] == 0
  # The run stopped without training on; its last checkpoint holds the last good parameters.
  assert max(metrics) == 7
  last = max(helpers.checkpoint_steps(model_dir))
  np.testing.assert_equal(_params(model_dir, last), _params(model_dir, 4))
  # The evaluator hook ran every 2 steps on the current parameters; a failing evaluator is
  # recorded and does not stop the run.
  for step in (2, 4, 6):
    assert metrics[step]["eval/probe_step"] == step
    assert metrics[step]["eval/probe_param_norm"] == pytest.approx(metrics[step]["param_norm"], rel=1e-5)
    assert metrics[step]["eval/eval_failed/broken"] == 1.0
    # The same report as `mslam eval` writes, marked as not final (the failed evaluator is named).
    saved = json.load(open(os.path.join(model_dir, "eval", f"step_{step}", "metrics.json")))
    assert saved["metrics"]["probe_step"] == step and saved["failed_evaluators"] == ["broken"]
  assert "eval/probe_step" not in metrics[3]
