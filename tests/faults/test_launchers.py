"""Every launcher hands paths with spaces, quotes, `;` and `$( )` to `mslam train` unchanged (one
argument each, parsed by gin back to the same string), never as shell code; tpu_pod.sh through a
fake gcloud whose --command is then run by a shell, as the TPU workers would."""
import json
import os
import subprocess
import sys

import gin
import pytest

from tests.trainer import helpers

LAUNCH = os.path.join(helpers.REPO, "launch")
NASTY = [
    "gs://bucket/runs/600m",
    "/tmp/a dir/with spaces",
    "/tmp/it's here",
    '/tmp/x"; touch PWNED; echo "',
    "/tmp/$(touch PWNED2)/`touch PWNED3`",
    "/tmp/back\\slash and 'both' \"quotes\"",
]
RECORDER = """#!{python}
import json, sys
with open({log!r}, "a") as f:
  f.write(json.dumps([__file__.rsplit("/", 1)[-1]] + sys.argv[1:]) + "\\n")
"""


@pytest.fixture
def fake_bin(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  log = str(tmp_path / "argv.jsonl")
  for name in ("mslam", "gcloud"):
    (bin_dir / name).write_text(RECORDER.format(python=sys.executable, log=log))
    (bin_dir / name).chmod(0o755)
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
  return env, log, tmp_path


def _calls(log):
  with open(log) as f:
    return [json.loads(line) for line in f]


def _gin_value(argv, flag):
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  [value] = [a.split("=", 1)[1] for a in argv if a.startswith(f"--gin.{flag}=")]
  gin.clear_config()
  try:
    config.parse_gin([], [f"{flag} = {value}"])
    return config.macro(flag)
  finally:
    gin.clear_config()


def _check_mslam_argv(argv, model_dir, corpus_dir, extra):
  assert argv[:2] == ["mslam", "train"]
  assert _gin_value(argv, "MODEL_DIR") == model_dir
  assert _gin_value(argv, "CORPUS_DIR") == corpus_dir
  assert argv[-len(extra):] == extra


@pytest.mark.parametrize("launcher", ["local.sh", "gpu_multihost.sh", "tpu_pod.sh"])
@pytest.mark.parametrize("index", range(len(NASTY)))
def test_launcher_passes_arguments_unchanged(fake_bin, launcher, index):
  env, log, workdir = fake_bin
  model_dir, corpus_dir = NASTY[index], NASTY[-1 - index]
  extra = [f"--gin.train.log_every=10", f"--gin.note={NASTY[index]!r}"]
  args = {"local.sh": [model_dir, corpus_dir, "20", "tiny"],
          "gpu_multihost.sh": [model_dir, corpus_dir, "20", "tiny"],
          "tpu_pod.sh": ["my-tpu", "us-central2-b", model_dir, corpus_dir, "20", "tiny"]}[launcher]
  run = subprocess.run(["bash", os.path.join(LAUNCH, launcher), *args, *extra], env=env, cwd=workdir,
                       capture_output=True, text=True, timeout=60)
  assert run.returncode == 0, run.stderr
  calls = _calls(log)
  if launcher == "tpu_pod.sh":
    [gcloud] = calls
    [command] = [a.split("=", 1)[1] for a in gcloud if a.startswith("--command=")]
    assert gcloud[1:7] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-central2-b"]
    remote = subprocess.run(["bash", "-c", command], env=env, cwd=workdir, capture_output=True, text=True,
                            timeout=60)  # what each worker's shell does with it
    assert remote.returncode == 0, remote.stderr
    calls = _calls(log)[1:]
  [argv] = calls
  _check_mslam_argv(argv, model_dir, corpus_dir, extra)
  assert not [p for p in os.listdir(workdir) if p.startswith("PWNED")]  # no path ran as code
