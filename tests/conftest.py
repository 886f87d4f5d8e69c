"""Shared pytest fixtures: a tiny built-in corpus and a tiny pre-trained, evaluated run, each made
once per test session (the corpus and the pre-trained run once for all pytest-xdist workers); one
persistent JAX compilation cache for the suite and its subprocesses.

Tiers: `pytest -m "not slow"` skips the end-to-end runs (subprocess training, the demo); `pytest`
runs everything, on two pytest-xdist workers (pytest.ini; `-n 0` for one process, e.g. with --pdb).
"""
import fcntl
import json
import os
import shutil

# Set before any test imports TensorFlow or JAX (subprocesses inherit them).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests check behaviour, not speed: skipping LLVM's expensive passes makes XLA's CPU compiles of the
# train step several times faster and computes the same functions. At that level XLA's older fusion
# emitters compile a third faster again (a tiny joint train step: 16 s -> 11 s); at the commands'
# level 1 they do not (benchmarks/README.md), so only the suite uses them. XLA's fast-compile preset
# skips the HLO passes that spend compile time to buy run time: the demo's joint step at the suite's
# level, XLA's part 11.8 s -> 10.5 s; the commands keep the default, whose steps ran up to 5 % faster.
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true "
                      "--xla_cpu_use_fusion_emitters=false --xla_cpu_opt_preset=CPU_OPT_PRESET_FAST_COMPILE")
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{FAST_COMPILE_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Python's collector as in a command (mslam_jax/garbage_collector.py): fewer collections while
# TensorFlow, JAX and the project load, and after the imports below, their objects frozen.
from mslam_jax import garbage_collector  # pylint: disable=g-import-not-at-top,wrong-import-position

garbage_collector.tune()

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from mslam_jax import compilation_cache  # pylint: disable=g-import-not-at-top,wrong-import-position
from mslam_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position

# TensorFlow, whichever test imports it first, loads as in a command: quiet and off the GPUs.
cli.import_tensorflow_quietly()
garbage_collector.tune()  # the imports' objects frozen

# One persistent compilation cache for the whole session, its subprocesses included (they inherit
# the environment it sets): $MSLAM_JAX_CACHE if set, else its own directory, apart from the
# commands' cache since the flags above give different executables. MSLAM_JAX_CACHE=off: none.
TEST_CACHE_DIR = compilation_cache.enable(
    default=os.path.join(os.path.expanduser("~"), ".cache", "mslam_jax", "jax_cache_tests"))

# Test files that share an expensive fixture: each group is one unit of work for pytest-xdist (one
# worker, so the fixture is made once) and starts first (xdist puts the units with the most tests
# first), so the longest chains overlap the rest. The session's tiny run and everything that starts
# from it are one unit: split over two workers, one of them would wait on the other's training.
SHARED_FIXTURE_FILES = {
    **dict.fromkeys(["tests/data/test_remote_everywhere.py", "tests/evaluation/test_tiny_checkpoint.py",
                     "tests/faults/test_bad_audio.py", "tests/faults/test_bad_flags.py",
                     "tests/faults/test_corpus_identity.py", "tests/trainer/test_pretrain_integration.py",
                     "tests/evaluation/test_finetune_resume.py", "tests/evaluation/test_xtreme_s_finetune.py",
                     "tests/benchmarks/test_retrieval_diagnosis.py"],
                    "tiny_run"),  # the session's tiny run: trained, evaluated, fine-tuned from
    "tests/test_demo.py": "demo",  # the module's demo run
    "tests/interop/test_hf_parity.py": "hf_parity",  # a converted HF model (torch and transformers imported)
}
_GROUP_ORDER = ("tiny_run", "demo", "hf_parity")
_SESSION_RUNS = ("tiny_run", "tiny_pretrained")


def _file_of(nodeid: str) -> str:
  return nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    for run in _SESSION_RUNS:
      if run in getattr(item, "fixturenames", ()) and _file_of(item.nodeid) not in SHARED_FIXTURE_FILES:
        raise pytest.UsageError(f"{_file_of(item.nodeid)} uses {run}: list it in SHARED_FIXTURE_FILES "
                                "(tests/conftest.py)")

  def rank(item) -> int:
    group = SHARED_FIXTURE_FILES.get(_file_of(item.nodeid))
    return _GROUP_ORDER.index(group) if group else len(_GROUP_ORDER)

  items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """Load scheduling (pytest.ini: -n 2) with each SHARED_FIXTURE_FILES group as one unit of work."""
  from xdist import scheduler  # pylint: disable=g-import-not-at-top

  class SharedFixtureScheduling(scheduler.LoadScopeScheduling):

    def _split_scope(self, nodeid: str) -> str:
      return SHARED_FIXTURE_FILES.get(_file_of(nodeid), nodeid)

  return SharedFixtureScheduling(config, log)


# What TensorFlow prints as it loads on a CPU-only machine unless it loads quietly
# (cli.import_tensorflow_quietly), and a traceback: none of it may reach a healthy run's stderr.
LOAD_NOISE = ("cuInit", "cuda", "CUDA", "oneDNN", "absl::InitializeLog", "Traceback")

# A handful of languages: Latin, Cyrillic and Han script speech languages, one held out (Ukrainian,
# whose Cyrillic the Russian training data carries) and one text-only language (Zulu).
TINY_LANGUAGES = ("cmn", "deu", "eng", "rus", "ukr", "zul")
TINY_HELD_OUT = ("ukr",)
TINY_PER_LANGUAGE = 6
TINY_TEXT_PER_LANGUAGE = 8
TINY_SEED = 0


def build_tiny_corpus(out_dir: str, **overrides) -> dict:
  from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import espeak  # pylint: disable=g-import-not-at-top
  # In-process synthesis: the same clips as the builder's default worker process, without the
  # seconds a fresh process takes to start.
  kwargs = dict(languages_=TINY_LANGUAGES, held_out=TINY_HELD_OUT, per_language=TINY_PER_LANGUAGE,
                text_per_language=TINY_TEXT_PER_LANGUAGE, seed=TINY_SEED, progress=False,
                synthesize=espeak.synthesize)
  kwargs.update(overrides)
  return builtin_corpus.build_builtin_corpus(out_dir, **kwargs)


def copy_with_another_vocabulary(corpus_dir: str, out: str) -> str:
  """`corpus_dir` copied to `out` with its characters reordered: another build's vocabulary (as a
  rebuild from other text would give), the same manifest."""
  shutil.copytree(corpus_dir, out)
  path = os.path.join(out, "vocab", "characters.json")
  with open(path, encoding="utf-8") as f:
    vocab = json.load(f)
  vocab["characters"] = list(reversed(vocab["characters"]))
  with open(path, "w", encoding="utf-8") as f:
    json.dump(vocab, f)
  return out


def made_once(tmp_path_factory, name: str, make) -> str:
  """`make(directory)` once per test session, whichever pytest-xdist worker asks first (a file lock;
  the others wait, then read what it made). A failed attempt is removed and redone by the next."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the session's directory, above each worker's own
  out, done = root / name, root / f"{name}.done"
  with open(root / f"{name}.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not done.exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        make(str(out))
        done.touch()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return str(out)


@pytest.fixture(scope="session")
def builtin_corpus_dir(tmp_path_factory) -> str:
  """A tiny built-in corpus (6 languages, 6 clips per speech stream, `ukr` held out), read-only.

  Every stream has train/validation/test shards (paired/ukr has no train split), manifest.json
  and vocab/.
  """
  return made_once(tmp_path_factory, "builtin_corpus", build_tiny_corpus)


# Small enough to compile fast on 2 cores; a checkpoint and a metrics line at every step. One layer
# per stack: the CPU unrolls the stacks, so each layer is compiled again (the run and its
# evaluation, 64 s -> 52 s; no test reads a layer count).
TINY_RUN_BINDINGS = (
    "NUM_SPEECH_LAYERS=1", "NUM_SHARED_LAYERS=1",
    "SPEECH_BATCH=2", "TEXT_BATCH=2", "PAIRED_BATCH=2", "SPEECH_SAMPLES=32000",
    "PAIRED_SAMPLES=32000", "TEXT_LENGTH=32", "PAIRED_TEXT_LENGTH=32",
    "train.log_every=1", "train.checkpoint_every=1", "train.progress_bar=False",
    "train.async_checkpoints=False",
    "make_optimizer.peak_learning_rate=1e-3", "make_optimizer.warmup_steps=10",
)
TINY_RUN_STEPS = 3


def tiny_train_args(model_dir: str, corpus_dir: str, steps: int = TINY_RUN_STEPS) -> list[str]:
  """`mslam train` of the tiny run (models/tiny.gin + runs/pretrain.gin)."""
  return (["train", "--gin_file=models/tiny.gin", "--gin_file=runs/pretrain.gin", f"--gin.MODEL_DIR='{model_dir}'",
           f"--gin.TRAIN_STEPS={steps}", f"--gin.CORPUS_DIR='{corpus_dir}'"]
          + [f"--gin.{b}" for b in TINY_RUN_BINDINGS])


ALL_EVALUATORS = ("retrieval", "langid", "langid_finetune", "ctc", "zero_shot", "alignment", "embedding_map")


@pytest.fixture(scope="session")
def tiny_pretrained(builtin_corpus_dir, tmp_path_factory) -> str:
  """models/tiny.gin + runs/pretrain.gin trained 3 steps on the tiny corpus (a checkpoint at every
  step) through `mslam train`, once per session for both xdist workers. For the tests that only
  start from its checkpoints; `tiny_run` evaluates it too."""
  import gin  # pylint: disable=g-import-not-at-top

  def train(model_dir: str) -> None:
    gin.clear_config()
    try:
      assert cli.main(tiny_train_args(model_dir, builtin_corpus_dir)) == 0, "training the tiny run failed"
    finally:
      gin.clear_config()
  return made_once(tmp_path_factory, "tiny_run", train)


@pytest.fixture(scope="session")
def tiny_run(tiny_pretrained, builtin_corpus_dir) -> str:
  """`tiny_pretrained` and `mslam eval` of its latest step with every evaluator
  (MODEL_DIR/eval/step_3/), once per session, through the commands a user runs. Read-only for the
  tests that use it."""
  import gin  # pylint: disable=g-import-not-at-top
  from mslam_jax import cli  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    rc = cli.main(["eval", "--model_dir", tiny_pretrained, "--corpus_dir", builtin_corpus_dir,
                   f"--gin.build_evaluators.names={list(ALL_EVALUATORS)!r}",
                   "--gin.FinetuneConfig.steps=3", "--gin.FinetuneConfig.freeze='frozen'",
                   "--gin.langid_head/FinetuneConfig.steps=3"])
    assert rc == 0, "evaluating the tiny run failed"
  finally:
    gin.clear_config()
  return tiny_pretrained
