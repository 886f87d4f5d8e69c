"""Parity with transformers' Wav2Vec2BertModel + SeamlessM4TFeatureExtractor (needs the `hf` extra).

A small randomly initialized Wav2Vec2BertModel (every tensor random, layer norms included, so that
a misplaced tensor shows) is saved, converted with `mslam convert from-hf`, and loaded the way
`mslam finetune` loads a run; the same audio goes through both. Figures are printed (pytest -s).
"""
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity with transformers needs the hf extra: pip install 'mslam_jax[hf]'")
transformers = pytest.importorskip("transformers", reason="needs the hf extra: pip install 'mslam_jax[hf]'")

from mslam_jax import cli  # pylint: disable=g-import-not-at-top,wrong-import-position
from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position
from mslam_jax import config as run_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from mslam_jax.interop import hf_w2vbert as hw  # pylint: disable=g-import-not-at-top,wrong-import-position
from mslam_jax.interop import init_from  # pylint: disable=g-import-not-at-top,wrong-import-position

SR = 16000
TOLERANCE = 1e-4
# 3 layers: speech_lower 1 (the contrastive layer), speech_upper 1, shared 1. Clips of up to 1.5 s
# give 74 stacked frames, past the 64-frame left clipping of the relative positions.
TINY = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48)
CONVERT_BINDINGS = ["--gin.VOCAB_SIZE=16", "--gin.CODEBOOK_SIZE=8", "--gin.REMAT_POLICY='none'",
                    "--gin.CONTRASTIVE_LAYER=1"]


def speech_like(seconds: float, seed: int) -> np.ndarray:
  """Harmonics of a gliding pitch, syllable-rate amplitude, some noise: float32 in [-1, 1)."""
  rs = np.random.RandomState(seed)
  t = np.arange(int(seconds * SR)) / SR
  f0 = 110 + 40 * rs.rand() + 30 * np.sin(2 * np.pi * 0.7 * t)
  phase = 2 * np.pi * np.cumsum(f0) / SR
  voiced = sum(np.sin(k * phase) / k for k in range(1, 12))
  envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rs.rand() * 6)
  return (0.2 * envelope * voiced + 0.01 * rs.randn(t.size)).astype(np.float32)


CLIPS = [speech_like(1.5, 1), speech_like(1.0, 2)[:15555], speech_like(0.77, 3)]


def pad(clips):
  audio = np.zeros((len(clips), max(len(c) for c in clips)), np.float32)
  mask = np.zeros(audio.shape, np.int32)
  for i, clip in enumerate(clips):
    audio[i, :len(clip)], mask[i, :len(clip)] = clip, 1
  return audio, mask


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  """A saved random Wav2Vec2BertModel (w2v-BERT 2.0's structural options) and its feature extractor."""
  directory = str(tmp_path_factory.mktemp("hf_w2vbert"))
  torch.manual_seed(0)
  model = transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig(**TINY)).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if p.ndim == 1:  # norms' scales around 1, every bias and the mask embedding around 0
        p.copy_((1.0 if "norm.weight" in name else 0.0) + 0.2 * torch.randn_like(p))
      else:  # fan-in scaled, so that activations stay O(1) through the layers
        p.copy_(torch.randn_like(p) / float(np.sqrt(np.prod(p.shape[1:]))))
  model.save_pretrained(directory)
  transformers.SeamlessM4TFeatureExtractor().save_pretrained(directory)
  return directory


@pytest.fixture(scope="module")
def converted(hf_dir, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("converted") / "run")
  assert cli.main(["convert", "from-hf", "--hf-dir", hf_dir, "--out", out, "--shared-layers", "1"]
                  + CONVERT_BINDINGS) == 0
  gin.clear_config()
  return out


def load_hf(directory):
  return transformers.Wav2Vec2BertModel.from_pretrained(directory).eval()


def hf_forward(model, features):
  with torch.no_grad():
    return model(torch.from_numpy(features["input_features"]),
                 attention_mask=torch.from_numpy(features["attention_mask"])).last_hidden_state.numpy()


def test_encoder_and_featurizer_match_transformers(hf_dir, converted):
  extractor = transformers.SeamlessM4TFeatureExtractor.from_pretrained(hf_dir)
  features = extractor(CLIPS, sampling_rate=SR, return_tensors="np")
  expected = hf_forward(load_hf(hf_dir), features)

  # The converted directory as `mslam finetune --model_dir` / `mslam eval` load a run.
  model, params, _ = run_config.load_run(converted, 0)
  assert sorted(hw.stack_sizes(params["encoder"]).values()) == [1, 1, 1]

  def stages(net, audio, audio_mask, hf_features, hf_mask):
    enc = net.encoder
    ours_features, mask = enc.speech_frontend(audio, audio_mask)
    _, x = enc.speech_layers(enc.project_speech(hf_features), hf_mask)
    return ours_features, mask, enc.shared_layers(x, hf_mask)

  @jax.jit
  def run(params, audio, audio_mask, hf_features, hf_mask):
    frames, frames_mask, _ = model.encode_speech(params, audio, audio_mask)
    return (frames, frames_mask) + model.network.apply({"params": params}, audio, audio_mask, hf_features, hf_mask,
                                                       method=stages)

  audio, audio_mask = pad(CLIPS)
  frames, frames_mask, ours_features, features_mask, from_hf_features = jax.device_get(run(
      params, audio, audio_mask, jnp.asarray(features["input_features"]), jnp.asarray(features["attention_mask"])))
  np.testing.assert_array_equal(features_mask, features["attention_mask"])
  np.testing.assert_array_equal(frames_mask, features["attention_mask"])
  valid = features["attention_mask"].astype(bool)
  lengths = valid.sum(1)
  assert lengths[0] > 64 + 1 and len(set(lengths.tolist())) == 3  # past the left clipping; padded rows
  featurizer_diff = float(np.abs(ours_features - features["input_features"])[valid].max())
  encoder_diff = float(np.abs(from_hf_features - expected)[valid].max())
  end_to_end_diff = float(np.abs(frames - expected)[valid].max())
  print(f"\nmax |ours - transformers|: featurizer {featurizer_diff:.2e}, encoder on HF features "
        f"{encoder_diff:.2e}, featurizer + encoder {end_to_end_diff:.2e} (last hidden states, fp32; "
        f"|hidden| up to {np.abs(expected[valid]).max():.1f})")
  assert featurizer_diff <= TOLERANCE
  assert encoder_diff <= TOLERANCE
  assert end_to_end_diff <= TOLERANCE


def test_round_trip_to_hf_is_bitwise_and_loads_in_transformers(hf_dir, converted, tmp_path):
  out = str(tmp_path / "hf_again")
  assert cli.main(["convert", "to-hf", "--model_dir", converted, "--out", out]) == 0
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  original, again = load_file(os.path.join(hf_dir, hw.WEIGHTS_FILE)), load_file(os.path.join(out, hw.WEIGHTS_FILE))
  assert again.keys() == original.keys() and len(again) == 3 * 32 + 5
  for key, value in original.items():
    assert again[key].dtype == value.dtype and again[key].shape == value.shape, key
    assert again[key].tobytes() == value.tobytes(), key
  with open(os.path.join(hf_dir, hw.CONFIG_FILE)) as f:
    source_config = json.load(f)
  with open(os.path.join(out, hw.CONFIG_FILE)) as f:
    config = json.load(f)
  assert {k: v for k, v in config.items() if k != "transformers_version"} == \
      {k: v for k, v in source_config.items() if k != "transformers_version"}
  # transformers loads both directories to the same model: the same outputs, bit for bit.
  extractor = transformers.SeamlessM4TFeatureExtractor.from_pretrained(out)
  features = extractor(CLIPS[:2], sampling_rate=SR, return_tensors="np")
  np.testing.assert_array_equal(hf_forward(load_hf(out), features), hf_forward(load_hf(hf_dir), features))


def test_checkpoint_step_dir_exports_and_size_matches_transformers(converted, tmp_path):
  """to-hf from one checkpoint's directory; the 600M size config has HF's parameter count."""
  out = str(tmp_path / "hf_from_step")
  assert cli.main(["convert", "to-hf", "--model_dir", os.path.join(converted, "checkpoints", "0"),
                   "--out", out]) == 0
  assert transformers.Wav2Vec2BertConfig.from_pretrained(out).num_hidden_layers == 3
  gin.clear_config()
  from mslam_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.models import model_info  # pylint: disable=g-import-not-at-top
  from mslam_jax.models import mslam  # pylint: disable=g-import-not-at-top
  config_lib.parse_gin(["models/w2vbert2_600m.gin"])
  ours = model_info.abstract_params(mslam.MSLAMModel())["encoder"]
  speech = {k: v for k, v in ours.items() if k not in ("text_embedding", "pooler")}
  with torch.device("meta"):
    reference = transformers.Wav2Vec2BertModel(transformers.Wav2Vec2BertConfig())
  assert model_info.count_params(speech) == sum(p.numel() for p in reference.parameters())


def test_finetune_config_starts_from_the_converted_checkpoint(converted, tmp_path):
  # The bindings `mslam finetune --model_dir=CONVERTED --gin_file=runs/finetune_from_w2vbert2.gin` makes.
  run_config.parse_run_config(converted, ["runs/finetune_from_w2vbert2.gin"],
                              [f"MODEL_DIR = '{converted}'", f"CORPUS_DIR = '{tmp_path}'",
                               f"OUTPUT_DIR = '{tmp_path / 'ctc'}'"])
  from mslam_jax.evaluation import finetune  # pylint: disable=g-import-not-at-top
  config = finetune.FinetuneConfig()
  assert config.freeze == "all" and config.pretrained_head is None
  model = run_config.build_model()
  assert model.encoder.num_shared_layers == 1 and model.encoder.embed_dim == TINY["hidden_size"]
  params, _ = checkpoints.restore_params(converted, 0)
  # What the fine-tuning would train with --freeze=top_k --top_k=1: the shared stack only.
  masks = finetune.gradient_masks(params["encoder"], finetune.FinetuneConfig(freeze="top_k", top_k=1))
  assert np.all(np.asarray(masks["shared"]["layers"]["final_norm"]["scale"]) == 1.0)
  assert masks["speech_lower"]["layers"]["final_norm"]["scale"] == 0.0
  # Pre-training from it: a fresh model's speech encoder replaced by the converted one.
  fresh = jax.tree.map(jnp.zeros_like, params)
  merged = init_from.initialize_from_checkpoint(fresh, checkpoint=converted)
  jax.tree.map(np.testing.assert_array_equal, merged["encoder"]["shared"], params["encoder"]["shared"])
  np.testing.assert_array_equal(merged["encoder"]["text_embedding"]["token_embedding"]["embedding"], 0.0)
