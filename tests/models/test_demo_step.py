"""The demo's joint step as the demo configures it (runs/demo.gin), traced, never compiled."""
import os

import flax
import gin
import jax

from mslam_jax import config
from mslam_jax.commands import demo
from mslam_jax.data import contract
from mslam_jax.models import mslam
from tests.trainer import helpers

# No corpus: the vocabulary takes the demo corpus' size (benchmarks/step_benchmark.py --joint).
BINDINGS = ["MODEL_DIR = '/tmp/unused'", "CORPUS_DIR = '/tmp/unused'", "corpus_vocab_size.corpus_dir = None",
            "VOCAB_SIZE = 128"]


def test_the_demos_stacks_run_once_per_length_after_merging_near_equal_ones(monkeypatch):
  """Each call of a Conformer stack is one more copy of it for XLA to compile (the training-speed
  issue's 30 s): text CTC's upsampled rows (192) share TLM's call (196), the text rows and the
  transcripts (96) share theirs; the speech crops (75) and the paired clips (100) keep their own."""
  calls = []  # per _grouped call: (its inputs' lengths by name, the lengths each stack call ran at)
  grouped = mslam._grouped  # pylint: disable=protected-access

  def recording(fn, inputs, min_length_ratio=1.0):
    lengths = []

    def counted(x, *rest):
      lengths.append(x.shape[1])
      return fn(x, *rest)

    out = grouped(counted, inputs, min_length_ratio)
    calls.append(({name: arrays[0].shape[1] for name, arrays in inputs.items()}, lengths))
    return out

  gin.clear_config()
  try:
    # The checkout's configs, whatever an installed package maps `mslam_jax.gin_configs` to.
    config.parse_gin(list(demo.RUN_GIN_FILES), BINDINGS, [os.path.join(helpers.REPO, "gin_configs")])
    spec = contract.contract_batch_spec()
    model = mslam.MSLAMModel()
    params = flax.core.meta.unbox(jax.eval_shape(model.init, jax.random.key(0), spec))
    monkeypatch.setattr(mslam, "_grouped", recording)
    jax.eval_shape(lambda p, b: model.loss_fn(p, b, jax.random.key(1), 300), params, spec)
  finally:
    gin.clear_config()
  _, lower, shared = calls  # the frontend, the speech-only stack, the shared stack
  assert lower[0] == {"speech": 75, "tlm": 100, "full": 100} and sorted(lower[1]) == [75, 100]
  assert shared[0] == {"speech": 75, "text": 96, "text_ctc": 192, "tlm": 196, "full": 100, "transcript": 96}
  assert sorted(shared[1]) == [75, 96, 100, 196]
