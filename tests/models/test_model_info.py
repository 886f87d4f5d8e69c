"""`mslam model-info`: per-component and total parameter counts from eval_shape."""
import json

import gin
import pytest

from mslam_jax import cli
from mslam_jax.models import model_info


@pytest.fixture
def clean_gin():
  yield
  gin.clear_config()


def test_model_info_json_counts_every_component(capsys, clean_gin):
  dim, vocab, codebook = 32, 40, 64
  code = cli.main([
      "model-info", "--gin_file=models/tiny.gin", "--gin_file=experiments/mslam_ctc.gin", "--json",
      f"--gin.EMBED_DIM={dim}", f"--gin.VOCAB_SIZE={vocab}", f"--gin.CODEBOOK_SIZE={codebook}",
      "--gin.NUM_HEADS=2", "--gin.CONV_NORM_GROUPS=4", "--gin.MSLAMModel.contrastive_dim=16",
  ])
  assert code == 0
  info = json.loads(capsys.readouterr().out)
  components = info["components"]
  assert info["total_params"] == sum(components.values()) > 0
  # Heads whose sizes follow from the configuration alone (kernel + bias).
  assert components["ctc_head/proj"] == (dim + 1) * vocab
  assert components["text_head/proj"] == (dim + 1) * vocab
  assert components["codebook_head/proj"] == (dim + 1) * codebook
  assert components["context_projection/proj"] == (dim + 1) * 16
  assert components["quantizer/codebook"] == codebook * dim  # one group of `dim`-sized entries
  assert components["encoder/text_embedding"] == vocab * dim + 2 * dim  # table + layer norm
  assert components["encoder/speech_mask_embedding"] == dim
  assert info["dtypes"] == ["float32"]


def test_component_counts_group_by_depth():
  params = {"a": {"x": {"k": _Shape((2, 3))}, "y": _Shape((4,))}, "b": _Shape((5, 5))}
  assert model_info.component_counts(params, depth=1) == {"a": 10, "b": 25}
  assert model_info.component_counts(params, depth=2) == {"a/x": 6, "a/y": 4, "b": 25}
  assert model_info.count_params(params) == 35
  table = model_info.format_table({"total_params": 35, "components": {"a": 10, "b": 25}})
  assert "total" in table and "35" in table


class _Shape:
  def __init__(self, shape):
    self.shape = shape
