"""Subprocess plumbing for trainer tests: fake CPU devices must be set before JAX starts."""
import json
import os
import subprocess
import sys
import time
from typing import Sequence

from tests.conftest import FAST_COMPILE_FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STANDIN_GIN = os.path.join(REPO, "tests", "trainer", "standin_run.gin")


def env(devices: int = 1) -> dict:
  """This process' environment (the session's compilation cache included: conftest sets it) for a
  subprocess on `devices` CPU devices."""
  e = dict(os.environ)
  # One device is XLA's default: no flag for it, so that the subprocess' programs have the cache
  # keys (which hash XLA_FLAGS) of the same programs compiled in the test process (conftest).
  e["XLA_FLAGS"] = FAST_COMPILE_FLAGS + (f" --xla_force_host_platform_device_count={devices}" if devices > 1 else "")
  e["JAX_PLATFORMS"] = "cpu"
  e["PYTHONPATH"] = REPO + os.pathsep + e.get("PYTHONPATH", "")
  e["TF_CPP_MIN_LOG_LEVEL"] = "2"
  return e


def train_command(model_dir: str, steps: int, bindings: Sequence[str] = (),
                  gin_file: str = STANDIN_GIN) -> list[str]:
  return ([sys.executable, "-m", "mslam_jax.cli", "train", f"--gin_file={gin_file}",
           f"--gin.MODEL_DIR='{model_dir}'", f"--gin.TRAIN_STEPS={steps}"]
          + [f"--gin.{b}" for b in bindings])


def run_training(model_dir: str, steps: int, bindings: Sequence[str] = (), devices: int = 1,
                 timeout: float = 180,
                 extra_args: Sequence[str] = ()) -> subprocess.CompletedProcess:
  return subprocess.run(train_command(model_dir, steps, bindings) + list(extra_args), cwd=REPO,
                        env=env(devices), capture_output=True, text=True,
                        timeout=timeout)


def start_training(model_dir: str, steps: int, bindings: Sequence[str] = (), devices: int = 1,
                   log_path: str | None = None) -> subprocess.Popen:
  log = open(log_path or os.path.join(model_dir + ".log"), "w")
  return subprocess.Popen(train_command(model_dir, steps, bindings), cwd=REPO,
                          env=env(devices), stdout=log, stderr=subprocess.STDOUT)


def read_metrics(model_dir: str) -> dict[int, dict]:
  """metrics.jsonl merged by step (training and evaluation records of a step are separate lines;
  a restarted run rewrites the steps after its checkpoint, and the later value wins)."""
  path = os.path.join(model_dir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  by_step = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        record = json.loads(line)
        by_step.setdefault(record["step"], {}).update(record)
  return by_step


def wait_for_step(model_dir: str, step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
  deadline = time.time() + timeout
  while time.time() < deadline:
    if max(read_metrics(model_dir), default=0) >= step:
      return
    if proc.poll() is not None:
      raise AssertionError(f"run ended (rc={proc.returncode}) before step {step}")
    time.sleep(0.05)
  raise AssertionError(f"step {step} not reached in {timeout} s")


def checkpoint_state(model_dir: str, step: int) -> dict:
  """The saved train state of one checkpoint as numpy (nested dicts, as Orbax stores it)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  step_dir = os.path.join(model_dir, "checkpoints", str(step))
  return jax.tree.map(np.asarray, checkpoints.load_state_dict(step_dir))


def data_state(model_dir: str, step: int, process: int = 0):
  with open(os.path.join(model_dir, "checkpoints", str(step), "data_state",
                         f"process_{process}.json")) as f:
    return json.load(f)["value"]


def checkpoint_steps(model_dir: str) -> list[int]:
  directory = os.path.join(model_dir, "checkpoints")
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())
