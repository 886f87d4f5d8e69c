"""Shared pytest fixtures: a tiny built-in corpus, built once per test session."""
import os

# Set before any test imports TensorFlow or JAX (subprocesses inherit them).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests check behaviour, not speed: skipping LLVM's expensive passes makes XLA's CPU compiles of the
# train step several times faster and computes the same functions.
_FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{_FAST_COMPILE_FLAGS} {os.environ.get('XLA_FLAGS', '')}".strip()

import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from mslam_jax import compilation_cache  # pylint: disable=g-import-not-at-top,wrong-import-position

# One persistent compilation cache for the whole session, its subprocesses included (they inherit
# the environment it sets): $MSLAM_JAX_CACHE if set, else its own directory, apart from the
# commands' cache since the flags above give different executables. MSLAM_JAX_CACHE=off: none.
TEST_CACHE_DIR = compilation_cache.enable(
    os.environ.get(compilation_cache.ENV_VAR,
                   os.path.join(os.path.expanduser("~"), ".cache", "mslam_jax", "jax_cache_tests")))

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


@pytest.fixture(scope="session")
def builtin_corpus_dir(tmp_path_factory) -> str:
  """A tiny built-in corpus (6 languages, 6 clips per speech stream, `ukr` held out), read-only.

  Every stream has train/validation/test shards (paired/ukr has no train split), manifest.json
  and vocab/.
  """
  out = str(tmp_path_factory.mktemp("builtin_corpus"))
  build_tiny_corpus(out)
  return out
