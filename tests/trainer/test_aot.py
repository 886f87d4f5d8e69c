"""`mslam compile` lowers the train step from abstract sharded inputs on fake devices and reports
XLA's per-device memory."""
import json
import subprocess
import sys

import pytest

from tests.trainer import helpers

pytestmark = pytest.mark.slow  # end-to-end: subprocesses that compile and train

BATCH_BYTES = 4 * (8 * 256 * 2 + 8 + 8 * 12 * 2 + 8 + 8 * 128 * 2 + 8 * 8 * 2 + 8)  # standin_run.gin


def test_mslam_compile_reports_per_device_memory_for_an_fsdp_mesh():
  proc = subprocess.run(
      [sys.executable, "-m", "mslam_jax.cli", "compile", f"--gin_file={helpers.STANDIN_GIN}",
       "--mesh=fsdp:8", "--json", "--fast_compile"],
      cwd=helpers.REPO, env=helpers.env(1), capture_output=True, text=True, timeout=400)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout.strip().splitlines()[-1])
  assert report["mesh"] == {"data": 1, "fsdp": 8, "model": 1} and report["devices"] == 8
  memory = report["per_device_bytes"]
  assert set(memory) >= {"arguments", "outputs", "temps", "aliased", "total"}
  assert memory["total"] == memory["arguments"] + memory["outputs"] + memory["temps"] - memory["aliased"]
  # Parameters and both Adam moments (float32) plus the batch, were nothing sharded:
  unsharded = 3 * 4 * report["params"] + BATCH_BYTES
  # ... while on fsdp=8 each device holds about an eighth of them (small vectors stay whole).
  assert 0 < memory["arguments"] < unsharded / 4
  # The donated state is reused for the new state.
  assert memory["aliased"] > 0.5 * memory["outputs"]
