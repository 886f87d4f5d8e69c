"""w2v-BERT 2.0 interop without torch: tensor layouts, config checks, the size config, init-from."""
import functools
import json
import os

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta

from mslam_jax import checkpoints
from mslam_jax import cli
from mslam_jax import config as config_lib
from mslam_jax.interop import hf_w2vbert as hw
from mslam_jax.interop import init_from
from mslam_jax.layers import conformer
from mslam_jax.models import encoder as encoder_lib

# facebook/w2v-bert-2.0's config.json (transformers' Wav2Vec2BertConfig defaults), architecture part.
W2V_BERT_2 = {"model_type": "wav2vec2-bert", "hidden_size": 1024, "num_hidden_layers": 24,
              "num_attention_heads": 16, "intermediate_size": 4096, "feature_projection_input_dim": 160,
              "hidden_act": "swish", "layer_norm_eps": 1e-5, "position_embeddings_type": "relative_key",
              "left_max_position_embeddings": 64, "right_max_position_embeddings": 8,
              "conv_depthwise_kernel_size": 31, "add_adapter": False, "use_intermediate_ffn_before_adapter": False}


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def tiny_hf_config(**overrides):
  config = dict(W2V_BERT_2, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=24,
                left_max_position_embeddings=5, right_max_position_embeddings=2, conv_depthwise_kernel_size=7)
  config.update(overrides)
  return config


def parse_tiny_gin(scan_layers: bool, config=None) -> None:
  """The size file with a tiny HF config's architecture: 3 layers = 1 + 1 speech-only + 1 shared."""
  config_lib.parse_gin(["models/w2vbert2_600m.gin"],
                       hw.gin_bindings_from_hf(config or tiny_hf_config(), num_shared_layers=1)
                       + hw.speech_layer_bindings(3, 1)
                       + [f"SCAN_LAYERS = {scan_layers}", "CONTRASTIVE_LAYER = 1", "VOCAB_SIZE = 16"])


@functools.lru_cache(maxsize=None)
def _tiny_shapes(scan_layers: bool):
  parse_tiny_gin(scan_layers)
  enc = encoder_lib.MSLAMEncoder()
  audio, tokens = jnp.zeros((1, 1600)), jnp.zeros((1, 4), jnp.int32)
  return meta.unbox(jax.eval_shape(enc.init, jax.random.key(0), audio, jnp.ones((1, 1600), jnp.int32),
                                   tokens, jnp.ones((1, 4), jnp.int32))["params"])


def random_encoder_params(scan_layers: bool, seed: int = 0):
  """Random values in the structure of the tiny encoder; leaves gin configured for it."""
  shapes = _tiny_shapes(scan_layers)
  gin.clear_config()
  parse_tiny_gin(scan_layers)
  rs = np.random.RandomState(seed)
  return jax.tree.map(lambda s: rs.randn(*s.shape).astype(s.dtype), shapes)


def test_hf_state_dict_names_and_shapes():
  params = random_encoder_params(scan_layers=True)
  state = hw.encoder_to_hf(params)
  # Per layer as in transformers' Wav2Vec2BertEncoderLayer; 3 layers over the three stacks.
  per_layer = {k.split(".", 3)[3] for k in state if k.startswith("encoder.layers.0.")}
  assert len(per_layer) == len(hw._LAYER_MAP) == 32
  assert {k for k in state if k.startswith("encoder.layers.")} == {
      f"encoder.layers.{i}.{name}" for i in range(3) for name in per_layer}
  assert state["feature_projection.projection.weight"].shape == (16, 160)
  assert state["encoder.layers.2.self_attn.linear_q.weight"].shape == (16, 16)
  assert state["encoder.layers.2.self_attn.linear_q.bias"].shape == (16,)
  assert state["encoder.layers.1.self_attn.distance_embedding.weight"].shape == (5 + 2 + 1, 8)
  assert state["encoder.layers.0.conv_module.pointwise_conv1.weight"].shape == (32, 16, 1)
  assert state["encoder.layers.0.conv_module.depthwise_conv.weight"].shape == (16, 1, 7)
  assert state["encoder.layers.0.ffn1.intermediate_dense.weight"].shape == (24, 16)
  assert state["masked_spec_embed"].shape == (16,)
  # Layer order: speech_lower, speech_upper, shared; query kernel [in, heads, head_dim] = W.T.
  np.testing.assert_array_equal(state["encoder.layers.2.self_attn.linear_q.weight"],
                                params["shared"]["layers"]["self_attention"]["query_kernel"][0].reshape(16, 16).T)
  np.testing.assert_array_equal(state["encoder.layers.1.conv_module.depthwise_conv.weight"][:, 0, :],
                                params["speech_upper"]["layers"]["conv"]["depthwise"]["kernel"][0, :, 0, :].T)


def test_layouts_round_trip_bitwise_scanned_and_unrolled():
  scanned = random_encoder_params(scan_layers=True, seed=1)
  state = hw.encoder_to_hf(scanned)
  gin.clear_config()
  unrolled_target = random_encoder_params(scan_layers=False, seed=2)
  unrolled = hw.encoder_from_hf(unrolled_target, state)
  for stack in hw.STACKS:
    restacked = conformer.stack_layer_params(unrolled[stack], 1)
    jax.tree.map(np.testing.assert_array_equal, restacked, scanned[stack])
  back = hw.encoder_to_hf(unrolled)
  assert back.keys() == state.keys()
  for key in state:
    assert back[key].dtype == state[key].dtype
    np.testing.assert_array_equal(back[key], state[key])
  # The target's own arrays are untouched; what HF lacks (text embedding) keeps the target's values.
  assert not np.array_equal(unrolled_target["shared"]["layers_0"]["final_norm"]["scale"],
                            unrolled["shared"]["layers_0"]["final_norm"]["scale"])
  jax.tree.map(np.testing.assert_array_equal, unrolled["text_embedding"], unrolled_target["text_embedding"])


def test_missing_extra_or_misshaped_tensors_are_errors():
  params = random_encoder_params(scan_layers=True)
  state = hw.encoder_to_hf(params)
  missing = {k: v for k, v in state.items() if k != "encoder.layers.1.ffn2.output_dense.bias"}
  with pytest.raises(hw.UnsupportedConfigError, match="encoder.layers.1.ffn2.output_dense.bias"):
    hw.encoder_from_hf(params, missing)
  extra = dict(state, **{"encoder.layers.3.final_layer_norm.weight": np.ones(16, np.float32)})
  with pytest.raises(hw.UnsupportedConfigError, match="num_speech_layers/num_shared_layers"):
    hw.encoder_from_hf(params, extra)
  wrong = dict(state, **{"encoder.layers.0.conv_module.depthwise_conv.weight": np.ones((16, 1, 5), np.float32)})
  with pytest.raises(hw.UnsupportedConfigError, match="depthwise"):
    hw.encoder_from_hf(params, wrong)
  # A Wav2Vec2BertForCTC checkpoint: the model under "wav2vec2_bert.", the head left out.
  ctc = {f"wav2vec2_bert.{k}": v for k, v in state.items()}
  ctc["lm_head.weight"] = np.ones((5, 16), np.float32)
  jax.tree.map(np.testing.assert_array_equal, hw.encoder_from_hf(params, ctc), params)


@pytest.mark.parametrize("override, message", [
    ({"position_embeddings_type": "rotary"}, "position_embeddings_type='rotary'"),
    ({"position_embeddings_type": "relative"}, "position_embeddings_type='relative'"),
    ({"add_adapter": True}, "add_adapter"),
    ({"hidden_act": "tanh"}, "hidden_act='tanh'"),
    ({"num_attention_heads": 3}, "not divisible"),
    ({"feature_projection_input_dim": 80}, "feature_projection_input_dim=80"),
    ({"model_type": "wav2vec2"}, "model_type"),
])
def test_unsupported_hf_configs_name_the_setting(override, message):
  with pytest.raises(hw.UnsupportedConfigError, match=message):
    hw.gin_bindings_from_hf(tiny_hf_config(**override))


def test_cli_from_hf_rejects_unsupported_config(tmp_path, capsys):
  hf_dir = tmp_path / "hf"
  hf_dir.mkdir()
  (hf_dir / "config.json").write_text(json.dumps(tiny_hf_config(position_embeddings_type="rotary")))
  assert cli.main(["convert", "from-hf", "--hf-dir", str(hf_dir), "--out", str(tmp_path / "out")]) == 2
  assert "position_embeddings_type='rotary'" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "out")


def _export_config(*bindings):
  params = random_encoder_params(scan_layers=True)
  gin.parse_config(list(bindings))
  return hw.hf_config_from_architecture(hw.architecture_from_gin(16), params)


@pytest.mark.parametrize("binding, message", [
    ("ConformerStack.conv_norm = 'group_norm'", "ConformerStack.conv_norm='group_norm'"),
    ("ConformerStack.conv_causal = False", "ConformerStack.conv_causal=False"),
    ("ConformerStack.position_type = 'rotary'", "ConformerStack.position_type='rotary'"),
    ("SpeechFrontend.mode = 'conv2d'", "SpeechFrontend.mode='conv2d'"),
    ("FeatureProjection.layer_norm_epsilon = 1e-6", "FeatureProjection.layer_norm_epsilon"),
    ("ConformerStack.right_max_position = 3", "relative_key_embedding has 8 rows"),
])
def test_export_rejects_what_hf_cannot_express(binding, message):
  with pytest.raises(hw.UnsupportedConfigError, match=message):
    _export_config(binding)


def test_export_config_keeps_base_settings_and_activation_spelling():
  params = random_encoder_params(scan_layers=True)
  base = dict(tiny_hf_config(hidden_act="silu"), mask_time_prob=0.0, hidden_dropout=0.2, hidden_size=999)
  config = hw.hf_config_from_architecture(hw.architecture_from_gin(16), params, base)
  assert config["hidden_act"] == "silu" and config["hidden_dropout"] == 0.2 and config["hidden_size"] == 16
  assert not hw.mask_embedding_in_hf(config)
  for key in ("num_hidden_layers", "num_attention_heads", "intermediate_size", "left_max_position_embeddings",
              "right_max_position_embeddings", "conv_depthwise_kernel_size", "feature_projection_input_dim"):
    assert config[key] == tiny_hf_config()[key], key


def test_size_config_is_w2v_bert_2_architecture():
  """models/w2vbert2_600m.gin alone gives facebook/w2v-bert-2.0's config (24 = 8 + 16 layers)."""
  config_lib.parse_gin(["models/w2vbert2_600m.gin"])
  enc = encoder_lib.MSLAMEncoder()
  assert (enc.num_speech_layers, enc.num_shared_layers) == (8, 16)
  audio, tokens = jnp.zeros((1, 1600)), jnp.zeros((1, 4), jnp.int32)
  shapes = meta.unbox(jax.eval_shape(enc.init, jax.random.key(0), audio, jnp.ones((1, 1600), jnp.int32),
                                     tokens, jnp.ones((1, 4), jnp.int32))["params"])
  config = hw.hf_config_from_architecture(hw.architecture_from_gin(enc.embed_dim), shapes)
  assert {k: config[k] for k in W2V_BERT_2} == W2V_BERT_2
  # The gin bindings the converter derives from that config change nothing the size file set.
  arch = hw.architecture_from_gin(enc.embed_dim)
  gin.parse_config(hw.gin_bindings_from_hf(W2V_BERT_2))
  assert hw.architecture_from_gin(enc.embed_dim) == arch


def test_initialize_from_checkpoint_takes_the_speech_encoder(tmp_path):
  source = {"encoder": random_encoder_params(scan_layers=True, seed=3), "ctc_head": {"kernel": np.ones((16, 5))}}
  checkpoints.save_params_checkpoint(str(tmp_path / "run"), source)
  fresh = {"encoder": random_encoder_params(scan_layers=True, seed=4), "ctc_head": {"kernel": np.zeros((16, 5))}}
  fresh = jax.tree.map(jnp.asarray, fresh)
  merged = init_from.initialize_from_checkpoint(fresh, checkpoint=str(tmp_path / "run"))
  for stack in ("speech_projection", "speech_lower", "speech_upper", "shared", "speech_mask_embedding"):
    jax.tree.map(np.testing.assert_array_equal, merged["encoder"][stack], source["encoder"][stack])
  jax.tree.map(np.testing.assert_array_equal, merged["encoder"]["text_embedding"], fresh["encoder"]["text_embedding"])
  np.testing.assert_array_equal(merged["ctc_head"]["kernel"], 0.0)
  assert merged["encoder"]["shared"]["layers"]["final_norm"]["scale"].sharding == \
      fresh["encoder"]["shared"]["layers"]["final_norm"]["scale"].sharding
  only_shared, taken = init_from.merge_params(fresh, source, [r"encoder/shared/.*"])
  assert taken and all(name.startswith("encoder/shared/") for name in taken)
  jax.tree.map(np.testing.assert_array_equal, only_shared["encoder"]["speech_lower"], fresh["encoder"]["speech_lower"])
  with pytest.raises(ValueError, match="matches no parameter"):
    init_from.merge_params(fresh, source, [r"decoder/.*"])
  unrolled = {"encoder": random_encoder_params(scan_layers=False)}
  gin.clear_config()
  with pytest.raises(ValueError, match="no parameter 'encoder/shared/layers_0"):
    init_from.merge_params(unrolled, source)


def test_load_params_reads_only_the_params_of_a_training_state(tmp_path):
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  params = {"encoder": {"speech_mask_embedding": np.arange(4, dtype=np.float32)}}
  state = {"params": params, "opt_state": {"mu": np.ones(4, np.float32)}, "step": np.int32(7)}
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(str(tmp_path / "checkpoints" / "7" / "state"), state)
    checkpointer.wait_until_finished()
  loaded = checkpoints.load_params(checkpoints.resolve_checkpoint(str(tmp_path / "checkpoints" / "7"))[1])
  assert set(loaded) == {"encoder"}
  np.testing.assert_array_equal(loaded["encoder"]["speech_mask_embedding"], np.arange(4))
