"""benchmarks/gpu_pass.sh's scaffolding: the jobs it plans, skipped when its time limit leaves no
room (the timed jobs themselves are mfu_benchmark.py's, tested beside this)."""
import os
import re
import subprocess

from tests import benchmark_scripts

SCRIPT = os.path.join(benchmark_scripts.REPO, "benchmarks", "gpu_pass.sh")


def test_jobs_that_do_not_fit_the_limit_are_skipped_and_named(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, OUT=str(out), LIMIT="0", BASELINE=str(tmp_path),
             VARIANTS='REMAT_POLICY="none" DROPOUT_RATE=0.0')
  subprocess.run(["bash", SCRIPT], env=env, check=True, capture_output=True, timeout=120)
  summary = (out / "summary.txt").read_text().splitlines()
  skipped = [line.split()[1].rstrip(":") for line in summary if line.startswith("SKIP")]
  assert skipped == ["600m", "600m_baseline", "600m_variant_1", "600m_variant_2", "2b"]
  assert summary[-1].startswith("total ")
  assert re.search(r"^jax \d+\.\d+", (out / "env.txt").read_text(), re.M)  # what the pass ran on


def test_without_out_it_stops_and_says_what_to_set():
  env = {k: v for k, v in os.environ.items() if k != "OUT"}
  r = subprocess.run(["bash", SCRIPT], env=env, capture_output=True, text=True, timeout=60)
  assert r.returncode != 0 and "set OUT" in r.stderr
