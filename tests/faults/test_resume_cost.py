"""Resuming the data pipeline costs the same at any position: the tf.data iterator's own
checkpoint is restored instead of re-reading what was consumed; the batches after resume are
bitwise those of the uninterrupted run.

The cost is counted in bytes read by this process (`rchar` of /proc/self/io, every thread's reads,
tf.data's included), not timed: the count is the same from run to run and on a busy machine.
"""
import os

import gin
import numpy as np
import pytest

pytestmark = [
    pytest.mark.slow,  # reads 2,000 items per stream to make the far state
    pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="counts bytes read through Linux's /proc/self/io"),
]

BATCH = 8
FAR = 2000  # items per stream consumed before the far checkpoint


def _iterator(corpus):
  from mslam_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  gin.clear_config()  # the corpus is registered lazily from this config: kept until the test ends
  return pipeline.builtin_step_iterator(corpus, [f"SPEECH_BATCH={BATCH}", f"TEXT_BATCH={BATCH}",
                                                 f"PAIRED_BATCH={BATCH}", "make_step_iterator.prefetch=0"])


def _bytes_read() -> int:
  with open("/proc/self/io", encoding="ascii") as f:
    return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.fixture(autouse=True)
def _clear_gin():
  yield
  gin.clear_config()


def test_resume_reads_as_little_at_any_position(builtin_corpus_dir):
  run = _iterator(builtin_corpus_dir)
  states, following = {}, {}
  start = _bytes_read()
  for items in (0, FAR):
    while run.position < items // BATCH:
      next(run)
    states[items] = run.get_state()
    following[items] = next(run)
  consumed = _bytes_read() - start  # what a resume that re-read the consumed items would read again
  read = {}
  for items, state in states.items():
    resumed = _iterator(builtin_corpus_dir)
    before = _bytes_read()
    resumed.set_state(state)
    batch = next(resumed)
    read[items] = _bytes_read() - before
    for stream, features in following[items].items():
      for key, value in features.items():
        np.testing.assert_array_equal(batch[stream][key], value, err_msg=f"{items} items: {stream}/{key}")
  print("MB read by a resume, by items consumed:", {k: round(v / 1e6, 1) for k, v in read.items()},
        "; by the run to the far state:", round(consumed / 1e6, 1))
  # On the session's tiny corpus: 11-12 MB at the start, 24-27 MB at 2,000 items (the restored
  # state's open shards), against the run's 530 MB.
  assert read[FAR] - read[0] < 0.1 * consumed, (read, consumed)
