"""`mslam train` on a mixture of prepared corpora, through runs/continue_w2vbert2.gin (which includes
data/mslam_paper.gin): a tiny w2v-BERT 2.0 (transformers) converted, then pre-trained further
jointly with text; the paired stream mixes two corpora."""
import math
import os

import gin
import numpy as np
import pytest

from mslam_jax.data.corpora import prepare
from mslam_jax.data.corpora import tasks
from tests.data.corpora import trees
from tests.trainer import helpers

TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48)


@pytest.mark.slow
def test_continue_pretraining_converted_w2vbert2_with_text(tmp_path, caplog):
  torch = pytest.importorskip("torch", reason="needs the hf extra: pip install 'mslam_jax[hf]'")
  transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'mslam_jax[hf]'")
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from mslam_jax import cli  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig(**TINY)).save_pretrained(str(tmp_path / "hf"))
  converted = str(tmp_path / "w2vbert2")
  assert cli.main(["convert", "from-hf", "--hf-dir", str(tmp_path / "hf"), "--out", converted, "--shared-layers", "1",
                   "--gin.VOCAB_SIZE=16", "--gin.CODEBOOK_SIZE=8", "--gin.REMAT_POLICY='none'",
                   "--gin.CONTRASTIVE_LAYER=1"]) == 0
  dirs = {}
  for name in ("common_voice", "fleurs", "mc4"):
    dirs[name] = str(tmp_path / "prepared" / name)
    prepare.prepare(name, trees.WRITERS[name](str(tmp_path / "src" / name)), dirs[name], shard_size=4)
  model_dir = str(tmp_path / "run")
  bindings = [f"MODEL_DIR='{model_dir}'", "TRAIN_STEPS=2", f"W2VBERT2_DIR='{converted}'", f"PREPARED_CORPORA={dirs!r}",
              "SPEECH_CORPORA=['common_voice']", "TEXT_CORPORA=['mc4']", "PAIRED_CORPORA=['common_voice', 'fleurs']",
              "VOCAB_SIZE=256", "SPEECH_BATCH=2", "TEXT_BATCH=2", "PAIRED_BATCH=2", "SPEECH_SAMPLES=48000",
              "PAIRED_SAMPLES=48000", "TEXT_LENGTH=48", "PAIRED_TEXT_LENGTH=48", "train.log_every=1",
              "train.checkpoint_every=1", "train.progress_bar=False", "train.async_checkpoints=False",
              # XLA's grouped conv: the CPU default (31 shifted multiply-adds a conv at this kernel
              # size) compiles 13 s slower, and tests/layers/test_conformer.py holds the two equal.
              "ConformerStack.conv_impl='grouped'"]
  # In this process: TF, SeqIO and JAX are already imported (a subprocess would start them again).
  gin.clear_config()
  try:
    with caplog.at_level("INFO"):
      rc = cli.main(["train", f"--gin_file={converted}/operative_config.gin", "--gin_file=runs/continue_w2vbert2.gin",
                     f"--gin_search_path={os.path.join(helpers.REPO, 'gin_configs')}"] + [f"--gin.{b}" for b in bindings])
  finally:
    gin.clear_config()
  assert rc == 0
  metrics = helpers.read_metrics(model_dir)
  assert sorted(metrics) == [1, 2] and all(math.isfinite(m["loss"]) for m in metrics.values())
  start, _ = checkpoints.restore_params(converted, 0)
  after, step = checkpoints.restore_params(model_dir, 1)
  assert step == 1
  # One step from the converted weights: close to them (a tiny step in warm-up), not a fresh init.
  a = np.asarray(after["encoder"]["speech_projection"]["projection"]["kernel"])
  b = np.asarray(start["encoder"]["speech_projection"]["projection"]["kernel"])
  assert a.shape == b.shape and np.max(np.abs(a - b)) < 1e-3 < np.max(np.abs(b))
  # The text embedding is fresh, sized by the corpora's shared vocabulary (rounded up to 128).
  assert after["encoder"]["text_embedding"]["token_embedding"]["embedding"].shape[0] == \
      tasks.prepared_vocab_size(dirs, max_size=256)
  assert "Mixture prepared_paired: 4 languages over ['common_voice', 'fleurs']" in caplog.text
