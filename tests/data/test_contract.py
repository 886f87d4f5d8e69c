"""The batch contract is written once: `mslam compile`'s batch, the model's init batch and the
stand-in iterator's batches all come from data/contract.py."""
import gin
import jax
import numpy as np

from mslam_jax.data import contract
from tests.trainer import helpers
from tests.trainer import standin


def _shapes(tree):
  return jax.tree.map(lambda x: (tuple(np.shape(x)), np.dtype(x.dtype).name), tree)


def test_contract_batch_spec_is_the_run_iterators_global_spec():
  gin.clear_config()
  try:
    gin.parse_config_files_and_bindings([helpers.STANDIN_GIN], ["MODEL_DIR = '/unused'", "TRAIN_STEPS = 1",
                                                               "SPEECH_BATCH = 4", "PAIRED_LENGTH = 5"])
    spec = contract.contract_batch_spec()
  finally:
    gin.clear_config()
  # One binding changed the data config; the compile spec follows it (no second set of sizes).
  assert _shapes(spec)["speech"]["audio"] == ((4, 256), "float32")
  assert _shapes(spec)["paired"]["tokens_mask"] == ((8, 5), "int32")
  batch = standin.SyntheticIterator(speech_batch=4, paired_length=5).global_batch(0)
  assert _shapes(batch) == _shapes(spec)


def test_model_dummy_batch_has_the_contracts_structure():
  from mslam_jax.models import mslam  # pylint: disable=g-import-not-at-top
  batch = mslam.MSLAMModel.dummy_batch(mslam.MSLAMModel.__new__(mslam.MSLAMModel), batch_size=2,
                                       audio_samples=320, text_length=7)
  expected = contract.batch_spec({s: (2, contract.stream_lengths(s, 320, 7)) for s in contract.STREAMS})
  assert _shapes(batch) == _shapes(expected)
  assert all(np.all(np.asarray(v) == 1) for s in batch.values() for k, v in s.items() if k.endswith("_mask"))
