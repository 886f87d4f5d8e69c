"""Two processes under jax.distributed (gloo CPU collectives) train as one process does over the
same global mesh (data=2, fsdp=2, model=2), each process feeding its own rows of the batch."""
import os
import socket
import subprocess

import jax
import numpy as np
import pytest

from tests.trainer import helpers

pytestmark = pytest.mark.slow  # end-to-end: subprocesses that compile and train

STEPS = 4
MESH = ["make_mesh.data = 2", "make_mesh.fsdp = 2", "make_mesh.model = 2"]
# gloo's all-reduce and XLA's in-process one may sum shards in different orders: float32 rounding.
LOSS_RTOL = 1e-5
PARAM_ATOL = 1e-5


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_like_one_process_on_the_same_global_mesh(tmp_path):
  single = str(tmp_path / "single")
  multi = str(tmp_path / "multi")
  address = f"127.0.0.1:{_free_port()}"
  procs = []
  for index in range(2):
    log = open(os.path.join(tmp_path, f"process_{index}.log"), "w")
    procs.append((subprocess.Popen(
        helpers.train_command(multi, STEPS, MESH) + [
            f"--coordinator_address={address}", "--num_processes=2", f"--process_id={index}"],
        cwd=helpers.REPO, env=helpers.env(devices=4), stdout=log, stderr=subprocess.STDOUT), log))
  reference = helpers.run_training(single, STEPS, MESH, devices=8, timeout=300)
  for proc, log in procs:
    proc.wait(timeout=300)
    log.close()
  logs = [open(os.path.join(tmp_path, f"process_{i}.log")).read() for i in range(2)]
  assert reference.returncode == 0, reference.stderr[-3000:]
  for (proc, _), log in zip(procs, logs):
    assert proc.returncode == 0, log[-3000:]
  assert "process 1 of 2, 4 local / 8 global devices" in logs[1]

  want, got = helpers.read_metrics(single), helpers.read_metrics(multi)
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got[s]["loss"] for s in got], [want[s]["loss"] for s in want],
                             rtol=LOSS_RTOL)
  params = [jax.tree.leaves(helpers.checkpoint_state(d, STEPS)["params"]) for d in (multi, single)]
  assert max(float(np.max(np.abs(a - b))) for a, b in zip(*params)) < PARAM_ATOL
  # Each process kept its own iterator position in the checkpoint.
  assert helpers.data_state(multi, STEPS, 0) == helpers.data_state(multi, STEPS, 1)
  assert helpers.data_state(multi, STEPS, 0)["position"] == STEPS
