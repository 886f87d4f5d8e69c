"""Two processes, JAX's preemption service off: SIGTERM to one host still stops both at the same
step (their flags are combined every few steps) with one checkpoint at the last logged step."""
import os
import signal
import socket
import subprocess

import pytest

from tests.trainer import helpers

pytestmark = pytest.mark.slow  # two `mslam train` processes under jax.distributed


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_sigterm_to_one_host_without_the_preemption_service_saves_on_all(tmp_path):
  model_dir = str(tmp_path / "run")
  address = f"127.0.0.1:{_free_port()}"
  env = dict(helpers.env(devices=1), JAX_ENABLE_PREEMPTION_SERVICE="false")
  procs, logs = [], []
  for index in range(2):
    logs.append(str(tmp_path / f"process_{index}.log"))
    procs.append(subprocess.Popen(
        helpers.train_command(model_dir, 500, ["SyntheticIterator.delay_s=0.05", "train.checkpoint_every=100"])
        + [f"--coordinator_address={address}", "--num_processes=2", f"--process_id={index}"],
        cwd=helpers.REPO, env=env, stdout=open(logs[-1], "w"), stderr=subprocess.STDOUT))
  try:
    helpers.wait_for_step(model_dir, 3, procs[0], timeout=300)
    procs[1].send_signal(signal.SIGTERM)
    codes = [p.wait(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  texts = [open(path).read() for path in logs]
  assert codes == [0, 0], texts[1][-3000:]
  assert all('"stopped": "preempted"' in text for text in texts)
  last = max(helpers.read_metrics(model_dir))
  assert 3 <= last < 500
  assert helpers.checkpoint_steps(model_dir)[-1] == last
  assert helpers.data_state(model_dir, last, 0)["position"] == helpers.data_state(model_dir, last, 1)["position"] == last
