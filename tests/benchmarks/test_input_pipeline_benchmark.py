"""input_pipeline_benchmark.py on the session's tiny corpus, as a user runs it: both readers yield
batches, and TensorFlow's load-time notices stay off stderr (as in a command)."""
import json
import os
import subprocess
import sys

import pytest

from tests import benchmark_scripts
from tests import conftest


@pytest.mark.slow  # a process of its own that loads TensorFlow and SeqIO
def test_both_readers_run_and_tensorflow_loads_quietly(builtin_corpus_dir):
  env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
  env["PYTHONPATH"] = benchmark_scripts.REPO + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, os.path.join(benchmark_scripts.REPO, "benchmarks", "input_pipeline_benchmark.py"),
                         "--corpus", builtin_corpus_dir, "--steps", "3", "--json"],
                        cwd=benchmark_scripts.REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["steps_per_s"] > 0 and result["peer_steps_per_s"] > 0
  assert set(result["batch"]) == {"speech", "text", "paired"}
  for noise in conftest.LOAD_NOISE:
    assert noise not in proc.stderr, proc.stderr
