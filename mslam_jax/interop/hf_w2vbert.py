"""transformers' Wav2Vec2BertModel (w2v-BERT 2.0) <-> our MSLAMEncoder: configs and weights.

The architecture is ours, configured (gin_configs/models/w2vbert2_600m.gin): the "stacked"
SpeechFrontend (80 log-mels x 2 frames, per-utterance normalized), FeatureProjection, and Conformer
blocks with relative-key attention clipped at [-64, +8], a causal depthwise conv of kernel 31 with
layer norm and no conv biases. HF's 24 layers fill our stacks in order: speech_lower (up to the
contrastive layer), speech_upper, then shared; how many go to the shared stack is a choice (gin:
MSLAMEncoder.num_shared_layers; the size file's 8 + 16 is mSLAM 600M's split).

Names and layouts (HF state-dict key -> our parameter path under "encoder"):
  feature_projection.layer_norm.{weight,bias}   speech_projection/layer_norm/{scale,bias}
  feature_projection.projection.{weight,bias}   speech_projection/projection/{kernel,bias}  W.T
  masked_spec_embed                             speech_mask_embedding
  encoder.layers.{i}.<name>                     <stack>/layers[_j]/<block path> (_LAYER_MAP)
Linear weights are [out, in] in torch and [in, out] (kernel) here; q/k/v kernels are [in, heads,
head_dim] and the output kernel [heads, head_dim, out]; torch Conv1d weights are [out, in, k], Flax
Conv kernels [k, in, out]. Every conversion is a transpose or reshape, so a round trip is bitwise.

Training-only settings (dropouts, layerdrop, SpecAugment) are not architecture: they come from gin.
"""
import dataclasses
import json
import logging
import os
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from etils import epath

HF_MODEL_TYPE = "wav2vec2-bert"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
# Wav2Vec2BertFor* (CTC, classification, ...) hold the model under this prefix; their heads are
# not part of the speech encoder and are left out (with a log line).
HF_MODEL_PREFIX = "wav2vec2_bert."
STACKS = ("speech_lower", "speech_upper", "shared")

# HF hidden_act -> ours (conformer.ACTIVATIONS); both FFNs and the conv module use it.
HF_TO_OUR_ACTIVATION = {
    "swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu",
    "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
}
OUR_TO_HF_ACTIVATION = {"swish": "swish", "silu": "swish", "relu": "relu", "gelu": "gelu",
                        "gelu_tanh": "gelu_pytorch_tanh"}
HF_TO_OUR_POSITION = {"relative_key": "relative_key", None: "none"}


class UnsupportedConfigError(ValueError):
  """A checkpoint or configuration that our layers cannot reproduce exactly."""


# -- tensor layouts --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Layout:
  """How one tensor is stored on each side: to_ours(hf, num_heads), to_hf(ours, num_heads)."""
  to_ours: Callable[[np.ndarray, int], np.ndarray]
  to_hf: Callable[[np.ndarray, int], np.ndarray]


COPY = _Layout(lambda w, h: w, lambda k, h: k)
LINEAR = _Layout(lambda w, h: w.T, lambda k, h: k.T)  # [out, in] <-> [in, out]
HEADS_IN = _Layout(lambda w, h: w.T.reshape(w.shape[1], h, -1),  # [H, in] <-> [in, heads, head_dim]
                   lambda k, h: k.reshape(k.shape[0], -1).T)
HEADS_BIAS = _Layout(lambda b, h: b.reshape(h, -1), lambda b, h: b.reshape(-1))
HEADS_OUT = _Layout(lambda w, h: w.T.reshape(h, -1, w.shape[0]),  # [out, H] <-> [heads, head_dim, out]
                    lambda k, h: k.reshape(-1, k.shape[-1]).T)
POINTWISE_CONV = _Layout(lambda w, h: w[:, :, 0].T, lambda k, h: k.T[:, :, None])  # [out, in, 1] <-> [in, out]
DEPTHWISE_CONV = _Layout(lambda w, h: w.transpose(2, 1, 0), lambda k, h: k.transpose(2, 1, 0))  # [C,1,K] <-> [K,1,C]


def _norm(hf: str, ours: str) -> list[tuple[str, str, _Layout]]:
  return [(f"{hf}.weight", f"{ours}/scale", COPY), (f"{hf}.bias", f"{ours}/bias", COPY)]


def _dense(hf: str, ours: str) -> list[tuple[str, str, _Layout]]:
  return [(f"{hf}.weight", f"{ours}/kernel", LINEAR), (f"{hf}.bias", f"{ours}/bias", COPY)]


# One Conformer block: (HF name under encoder.layers.{i}., our path under the block, layout).
_LAYER_MAP: tuple[tuple[str, str, _Layout], ...] = tuple(
    _norm("ffn1_layer_norm", "ffn1_norm")
    + _dense("ffn1.intermediate_dense", "ffn1/intermediate") + _dense("ffn1.output_dense", "ffn1/output")
    + _norm("self_attn_layer_norm", "self_attention_norm")
    + [(f"self_attn.linear_{x}.weight", f"self_attention/{name}_kernel", HEADS_IN)
       for x, name in (("q", "query"), ("k", "key"), ("v", "value"))]
    + [(f"self_attn.linear_{x}.bias", f"self_attention/{name}_bias", HEADS_BIAS)
       for x, name in (("q", "query"), ("k", "key"), ("v", "value"))]
    + [("self_attn.linear_out.weight", "self_attention/out_kernel", HEADS_OUT),
       ("self_attn.linear_out.bias", "self_attention/out_bias", COPY),
       ("self_attn.distance_embedding.weight", "self_attention/relative_key_embedding", COPY)]
    + _norm("conv_module.layer_norm", "conv/layer_norm")
    + [("conv_module.pointwise_conv1.weight", "conv/pointwise_in/kernel", POINTWISE_CONV),
       ("conv_module.depthwise_conv.weight", "conv/depthwise/kernel", DEPTHWISE_CONV)]
    + _norm("conv_module.depthwise_layer_norm", "conv/depthwise_norm")
    + [("conv_module.pointwise_conv2.weight", "conv/pointwise_out/kernel", POINTWISE_CONV)]
    + _norm("ffn2_layer_norm", "ffn2_norm")
    + _dense("ffn2.intermediate_dense", "ffn2/intermediate") + _dense("ffn2.output_dense", "ffn2/output")
    + _norm("final_layer_norm", "final_norm"))

# Outside the blocks (HF name, our path under "encoder", layout).
_TOP_MAP: tuple[tuple[str, str, _Layout], ...] = tuple(
    _norm("feature_projection.layer_norm", "speech_projection/layer_norm")
    + _dense("feature_projection.projection", "speech_projection/projection"))
# Only in HF models configured with mask_time_prob > 0 or mask_feature_prob > 0.
MASK_EMBEDDING = ("masked_spec_embed", "speech_mask_embedding")


# -- trees -----------------------------------------------------------------------------------------

def _get(tree: Mapping[str, Any], path: str) -> Any:
  for key in path.split("/"):
    tree = tree[key]
  return tree


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
  keys = path.split("/")
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = value


def _has(tree: Mapping[str, Any], path: str) -> bool:
  try:
    _get(tree, path)
    return True
  except (KeyError, TypeError):
    return False


def _copy_tree(tree: Any) -> Any:
  """Nested dicts with every leaf a fresh (writable) numpy array."""
  return {k: _copy_tree(v) for k, v in tree.items()} if isinstance(tree, Mapping) else np.array(tree)


def stack_sizes(encoder_params: Mapping[str, Any]) -> dict[str, int]:
  """Blocks per stack (speech_lower, speech_upper, shared) of encoder params, scanned or unrolled."""
  sizes = {}
  for stack in STACKS:
    tree = encoder_params.get(stack) or {}
    if "layers" in tree:
      sizes[stack] = int(np.shape(_get(tree["layers"], "final_norm/scale"))[0])
    else:
      sizes[stack] = sum(1 for key in tree if re.fullmatch(r"layers_\d+", key))
  return sizes


def _block_slots(encoder_params: Mapping[str, Any]) -> list[tuple[str, bool, int]]:
  """(stack, scanned, index in stack) of every block, in HF layer order."""
  slots = []
  for stack in STACKS:
    scanned = "layers" in (encoder_params.get(stack) or {})
    slots.extend((stack, scanned, j) for j in range(stack_sizes(encoder_params)[stack]))
  return slots


def _num_heads(encoder_params: Mapping[str, Any]) -> int:
  for stack, scanned, _ in _block_slots(encoder_params):
    kernel = _get(encoder_params[stack], "layers/self_attention/query_kernel" if scanned
                  else "layers_0/self_attention/query_kernel")
    return int(np.shape(kernel)[-2])
  raise UnsupportedConfigError("the encoder has no Conformer blocks")


# -- weights ---------------------------------------------------------------------------------------

def strip_hf_prefix(state: Mapping[str, Any]) -> dict[str, Any]:
  """A Wav2Vec2BertModel state dict from one of a bare model or a Wav2Vec2BertFor* model."""
  if not any(key.startswith(HF_MODEL_PREFIX) for key in state):
    return dict(state)
  inner = {key[len(HF_MODEL_PREFIX):]: value for key, value in state.items() if key.startswith(HF_MODEL_PREFIX)}
  heads = sorted(key for key in state if not key.startswith(HF_MODEL_PREFIX))
  if heads:
    logging.info("Leaving out %d tensors of the task head (%s): not part of the speech encoder",
                 len(heads), ", ".join(heads[:4]) + (", ..." if len(heads) > 4 else ""))
  return inner


def encoder_from_hf(target: Mapping[str, Any], state: Mapping[str, Any]) -> dict[str, Any]:
  """`target` (our encoder params: the structure, dtypes and the values HF has no tensor for) with
  every tensor of the HF state dict put in place. Raises on a missing, extra or mis-shaped tensor."""
  state = strip_hf_prefix(state)
  out = _copy_tree(target)
  num_heads = _num_heads(target)
  used: set[str] = set()

  def put(hf_name: str, container: dict[str, Any], path: str, layout: _Layout, row: int | None = None):
    if hf_name not in state:
      raise UnsupportedConfigError(f"the HF checkpoint has no tensor {hf_name!r} (needed for encoder/{path})")
    value = layout.to_ours(np.asarray(state[hf_name]), num_heads)
    current = _get(container, path)
    expected = np.shape(current)[1:] if row is not None else np.shape(current)
    if value.shape != tuple(expected):
      raise UnsupportedConfigError(f"HF tensor {hf_name!r} {np.shape(state[hf_name])} gives {value.shape}, "
                                   f"but encoder/{path} is {tuple(expected)}")
    value = value.astype(current.dtype)
    if row is None:
      _set(container, path, value)
    else:
      current[row] = value  # a copy made by _copy_tree: the caller's arrays stay as they were
    used.add(hf_name)

  for hf_name, path, layout in _TOP_MAP:
    put(hf_name, out, path, layout)
  if MASK_EMBEDDING[0] in state:
    put(MASK_EMBEDDING[0], out, MASK_EMBEDDING[1], COPY)
  else:
    logging.info("The HF checkpoint has no %s: speech_mask_embedding keeps its initial value", MASK_EMBEDDING[0])
  for layer, (stack, scanned, j) in enumerate(_block_slots(target)):
    block_root = out[stack]["layers"] if scanned else out[stack][f"layers_{j}"]
    for hf_suffix, path, layout in _LAYER_MAP:
      if not _has(block_root, path):
        continue  # e.g. no relative_key_embedding with position_type "none"
      put(f"encoder.layers.{layer}.{hf_suffix}", block_root, path, layout, row=j if scanned else None)
  extra = sorted(set(state) - used)
  if extra:
    raise UnsupportedConfigError(
        f"{len(extra)} HF tensors have no place in the encoder (e.g. {extra[:5]}); the checkpoint has "
        f"more layers or modules than the configured MSLAMEncoder "
        f"(layers {len(_block_slots(target))}; check MSLAMEncoder.num_speech_layers/num_shared_layers)")
  return out


def encoder_to_hf(encoder_params: Mapping[str, Any], include_mask_embedding: bool = True) -> dict[str, np.ndarray]:
  """Our encoder params -> a Wav2Vec2BertModel state dict (numpy, C-contiguous)."""
  num_heads = _num_heads(encoder_params)
  state: dict[str, np.ndarray] = {}

  def take(value, layout: _Layout) -> np.ndarray:
    return np.ascontiguousarray(layout.to_hf(np.asarray(value), num_heads))

  for hf_name, path, layout in _TOP_MAP:
    state[hf_name] = take(_get(encoder_params, path), layout)
  if include_mask_embedding:
    state[MASK_EMBEDDING[0]] = take(_get(encoder_params, MASK_EMBEDDING[1]), COPY)
  for layer, (stack, scanned, j) in enumerate(_block_slots(encoder_params)):
    block = encoder_params[stack]["layers"] if scanned else encoder_params[stack][f"layers_{j}"]
    for hf_suffix, path, layout in _LAYER_MAP:
      if _has(block, path):
        value = _get(block, path)
        state[f"encoder.layers.{layer}.{hf_suffix}"] = take(value[j] if scanned else value, layout)
  return state


# -- configs ---------------------------------------------------------------------------------------

def check_hf_config(config: Mapping[str, Any], num_mel_bins: int = 80, stack_stride: int = 2) -> None:
  """Raises UnsupportedConfigError naming the first HF setting our layers cannot reproduce."""
  def unsupported(what: str) -> UnsupportedConfigError:
    return UnsupportedConfigError(f"unsupported Wav2Vec2BertConfig: {what}")

  model_type = config.get("model_type", HF_MODEL_TYPE)
  if model_type != HF_MODEL_TYPE:
    raise unsupported(f"model_type={model_type!r} (only {HF_MODEL_TYPE!r} converts)")
  position = config.get("position_embeddings_type", "relative_key")
  if position not in HF_TO_OUR_POSITION:
    raise unsupported(f"position_embeddings_type={position!r}; supported: relative_key (w2v-BERT 2.0) or None "
                      "(HF's rotary and Transformer-XL 'relative' differ from our layers)")
  if config.get("add_adapter", False):
    raise unsupported("add_adapter=True (the convolutional adapter after the encoder has no counterpart here)")
  if config.get("use_intermediate_ffn_before_adapter", False):
    raise unsupported("use_intermediate_ffn_before_adapter=True")
  act = config.get("hidden_act", "swish")
  if act not in HF_TO_OUR_ACTIVATION:
    raise unsupported(f"hidden_act={act!r}; supported: {sorted(HF_TO_OUR_ACTIVATION)}")
  hidden, heads = int(config.get("hidden_size", 1024)), int(config.get("num_attention_heads", 16))
  if hidden % heads:
    raise unsupported(f"hidden_size={hidden} is not divisible by num_attention_heads={heads}")
  kernel = int(config.get("conv_depthwise_kernel_size", 31))
  if kernel % 2 == 0:
    raise unsupported(f"conv_depthwise_kernel_size={kernel} must be odd")
  feature_dim = int(config.get("feature_projection_input_dim", 160))
  if feature_dim != num_mel_bins * stack_stride:
    raise unsupported(f"feature_projection_input_dim={feature_dim}, but the feature extractor gives "
                      f"{num_mel_bins} mel bins x {stack_stride} stacked frames = {num_mel_bins * stack_stride}")
  if int(config.get("num_hidden_layers", 24)) < 1:
    raise unsupported("num_hidden_layers must be >= 1")


def extractor_settings(preprocessor: Mapping[str, Any] | None) -> tuple[int, int]:
  """(num_mel_bins, stride) of a SeamlessM4TFeatureExtractor's preprocessor_config.json."""
  if not preprocessor:
    return 80, 2
  kind = preprocessor.get("feature_extractor_type", "SeamlessM4TFeatureExtractor")
  if kind != "SeamlessM4TFeatureExtractor":
    raise UnsupportedConfigError(f"unsupported feature extractor {kind!r} (only SeamlessM4TFeatureExtractor)")
  rate = int(preprocessor.get("sampling_rate", 16000))
  if rate != 16000:
    raise UnsupportedConfigError(f"the feature extractor expects {rate} Hz audio; ours works at 16000 Hz")
  return int(preprocessor.get("num_mel_bins", 80)), int(preprocessor.get("stride", 2))


def gin_bindings_from_hf(config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None = None,
                         num_shared_layers: int | None = None) -> list[str]:
  """gin bindings that make our layers the HF architecture (after a size file; they win over it).

  Both the size files' macros (so that dependents, e.g. CODEVECTOR_DIM = %EMBED_DIM, follow) and
  the parameters themselves are bound. `num_shared_layers` (of the HF layers, the top ones) is
  bound when given; the speech-only count is whatever remains (set by the caller).
  """
  num_mel_bins, stride = extractor_settings(preprocessor)
  check_hf_config(config, num_mel_bins, stride)
  hidden = int(config.get("hidden_size", 1024))
  eps = float(config.get("layer_norm_eps", 1e-5))
  position = HF_TO_OUR_POSITION[config.get("position_embeddings_type", "relative_key")]
  values = {
      "EMBED_DIM": hidden,
      "MLP_DIM": int(config.get("intermediate_size", 4096)),
      "NUM_HEADS": int(config.get("num_attention_heads", 16)),
      "CONV_KERNEL": int(config.get("conv_depthwise_kernel_size", 31)),
      "POSITION_TYPE": position,
      "LEFT_MAX_POSITION": int(config.get("left_max_position_embeddings", 64)),
      "RIGHT_MAX_POSITION": int(config.get("right_max_position_embeddings", 8)),
      "FRONTEND": "stacked",
  }
  bindings = [f"{name} = {value!r}" for name, value in values.items()]
  bindings += [
      f"MSLAMEncoder.embed_dim = {hidden}",
      f"ConformerStack.mlp_dim = {values['MLP_DIM']}",
      f"ConformerStack.num_heads = {values['NUM_HEADS']}",
      "ConformerStack.head_dim = None",
      f"ConformerStack.position_type = {position!r}",
      f"ConformerStack.left_max_position = {values['LEFT_MAX_POSITION']}",
      f"ConformerStack.right_max_position = {values['RIGHT_MAX_POSITION']}",
      f"ConformerStack.conv_kernel_size = {values['CONV_KERNEL']}",
      "ConformerStack.conv_causal = True",
      "ConformerStack.conv_norm = 'layer_norm'",
      "ConformerStack.conv_use_bias = False",
      "ConformerStack.attention_use_bias = True",
      "ConformerStack.ffn_use_bias = True",
      "ConformerStack.ffn_residual_factor = 0.5",
      f"ConformerStack.activation = {HF_TO_OUR_ACTIVATION[config.get('hidden_act', 'swish')]!r}",
      f"ConformerStack.layer_norm_epsilon = {eps!r}",
      f"FeatureProjection.layer_norm_epsilon = {eps!r}",
      "SpeechFrontend.mode = 'stacked'",
      f"SpeechFrontend.num_mel_bins = {num_mel_bins}",
      f"SpeechFrontend.stack_stride = {stride}",
  ]
  if num_shared_layers is not None:
    bindings += [f"NUM_SHARED_LAYERS = {num_shared_layers}", f"MSLAMEncoder.num_shared_layers = {num_shared_layers}"]
  return bindings


def speech_layer_bindings(num_hidden_layers: int, num_shared_layers: int) -> list[str]:
  """Binds the speech-only layer count so that speech-only + shared = the HF model's layers."""
  if not 1 <= num_shared_layers <= num_hidden_layers:
    raise UnsupportedConfigError(
        f"MSLAMEncoder.num_shared_layers={num_shared_layers} must lie in [1, {num_hidden_layers}] (the "
        "HF model's num_hidden_layers): the top layers become the shared stack, the others speech-only")
  speech = num_hidden_layers - num_shared_layers
  return [f"NUM_SPEECH_LAYERS = {speech}", f"MSLAMEncoder.num_speech_layers = {speech}"]


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What HF's config.json needs, read from our configured modules (see `architecture_from_gin`)."""
  frontend_mode: str
  num_mel_bins: int
  stack_stride: int
  projection_epsilon: float
  block: Mapping[str, Any]  # ConformerStack attributes


def check_exportable(arch: Architecture, encoder_params: Mapping[str, Any]) -> None:
  """Raises UnsupportedConfigError naming the first gin binding HF's Wav2Vec2BertModel cannot express."""
  b = arch.block
  required = {
      "SpeechFrontend.mode": (arch.frontend_mode, "stacked"),
      "ConformerStack.conv_norm": (b["conv_norm"], "layer_norm"),
      "ConformerStack.conv_causal": (b["conv_causal"], True),
      "ConformerStack.conv_use_bias": (b["conv_use_bias"], False),
      "ConformerStack.attention_use_bias": (b["attention_use_bias"], True),
      "ConformerStack.ffn_use_bias": (b["ffn_use_bias"], True),
      "ConformerStack.ffn_residual_factor": (b["ffn_residual_factor"], 0.5),
  }
  for name, (value, needed) in required.items():
    if value != needed:
      raise UnsupportedConfigError(f"{name}={value!r}: HF's Wav2Vec2BertModel needs {needed!r}")
  if b["position_type"] not in ("relative_key", "none"):
    raise UnsupportedConfigError(f"ConformerStack.position_type={b['position_type']!r}: HF's Wav2Vec2BertModel "
                                 "reproduces 'relative_key' and 'none' only")
  if b["activation"] not in OUR_TO_HF_ACTIVATION:
    raise UnsupportedConfigError(f"ConformerStack.activation={b['activation']!r} has no HF hidden_act")
  if arch.projection_epsilon != b["layer_norm_epsilon"]:
    raise UnsupportedConfigError(
        f"FeatureProjection.layer_norm_epsilon={arch.projection_epsilon} differs from "
        f"ConformerStack.layer_norm_epsilon={b['layer_norm_epsilon']}; HF has one layer_norm_eps")
  hidden = int(np.shape(_get(encoder_params, "speech_projection/projection/kernel"))[-1])
  heads = _num_heads(encoder_params)
  if b["head_dim"] not in (None, hidden // heads) or hidden % heads:
    raise UnsupportedConfigError(f"ConformerStack.head_dim={b['head_dim']} with {heads} heads: HF needs "
                                 f"head_dim = hidden_size / heads = {hidden} / {heads}")


def hf_config_from_architecture(arch: Architecture, encoder_params: Mapping[str, Any],
                                base: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """config.json for Wav2Vec2BertModel: `base` (e.g. the imported model's config, which keeps its
  training settings) with every architecture field set from our model."""
  check_exportable(arch, encoder_params)
  b = arch.block
  projection = _get(encoder_params, "speech_projection/projection/kernel")
  slots = _block_slots(encoder_params)
  first = encoder_params[slots[0][0]]["layers" if slots[0][1] else "layers_0"]
  config = dict(base or {})
  # Keep the base's spelling of the activation (e.g. "silu") when it is the same function.
  canonical = HF_TO_OUR_ACTIVATION[OUR_TO_HF_ACTIVATION[b["activation"]]]
  act = config.get("hidden_act")
  if HF_TO_OUR_ACTIVATION.get(act) != canonical:
    act = OUR_TO_HF_ACTIVATION[b["activation"]]
  kernel_size = int(np.shape(_get(first, "conv/depthwise/kernel"))[-3])
  mlp = int(np.shape(_get(first, "ffn1/intermediate/kernel"))[-1])
  hidden = int(np.shape(projection)[-1])
  relative = b["position_type"] == "relative_key"
  if relative:
    rows = int(np.shape(_get(first, "self_attention/relative_key_embedding"))[-2])
    if rows != b["left_max_position"] + b["right_max_position"] + 1:
      raise UnsupportedConfigError(
          f"relative_key_embedding has {rows} rows, but ConformerStack.left_max_position + right_max_position "
          f"+ 1 = {b['left_max_position'] + b['right_max_position'] + 1}: the gin config is not the checkpoint's")
  config.update({
      "architectures": ["Wav2Vec2BertModel"],
      "model_type": HF_MODEL_TYPE,
      "hidden_size": hidden,
      "output_hidden_size": hidden,
      "num_hidden_layers": len(slots),
      "num_attention_heads": _num_heads(encoder_params),
      "intermediate_size": mlp,
      "feature_projection_input_dim": int(np.shape(projection)[0]),
      "hidden_act": act,
      "layer_norm_eps": float(b["layer_norm_epsilon"]),
      "position_embeddings_type": "relative_key" if relative else None,
      "conv_depthwise_kernel_size": kernel_size,
      "add_adapter": False,
      "use_intermediate_ffn_before_adapter": False,
  })
  if relative:
    config["left_max_position_embeddings"] = int(b["left_max_position"])
    config["right_max_position_embeddings"] = int(b["right_max_position"])
  if kernel_size != b["conv_kernel_size"]:
    raise UnsupportedConfigError(f"ConformerStack.conv_kernel_size={b['conv_kernel_size']} but the checkpoint's "
                                 f"depthwise kernel has {kernel_size} taps")
  if int(np.shape(projection)[0]) != arch.num_mel_bins * arch.stack_stride:
    raise UnsupportedConfigError(
        f"the feature projection takes {np.shape(projection)[0]} dims, not SpeechFrontend.num_mel_bins x "
        f"stack_stride = {arch.num_mel_bins * arch.stack_stride}")
  return config


def preprocessor_config(arch: Architecture, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
  """preprocessor_config.json of the SeamlessM4TFeatureExtractor that computes our features."""
  config = dict(base or {})
  config.update({
      "feature_extractor_type": "SeamlessM4TFeatureExtractor",
      "feature_size": arch.num_mel_bins,
      "num_mel_bins": arch.num_mel_bins,
      "sampling_rate": 16000,
      "stride": arch.stack_stride,
      "padding_value": 0.0,
      "padding_side": config.get("padding_side", "right"),
      "return_attention_mask": True,
  })
  return config


def mask_embedding_in_hf(config: Mapping[str, Any]) -> bool:
  """Whether HF's Wav2Vec2BertModel has `masked_spec_embed` under this config."""
  return float(config.get("mask_time_prob", 0.05)) > 0.0 or float(config.get("mask_feature_prob", 0.0)) > 0.0


# -- files -----------------------------------------------------------------------------------------

def _read_json(path: str) -> dict[str, Any]:
  return json.loads(epath.Path(path).read_text(encoding="utf-8"))  # local or remote (gs://...)


def _write_json(path: str, payload: Mapping[str, Any]) -> None:
  epath.Path(path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _safetensors():
  try:
    import safetensors.flax  # pylint: disable=g-import-not-at-top
    import safetensors.numpy  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("reading/writing HF checkpoints needs safetensors: pip install 'mslam_jax[hf]'") from e
  return safetensors


def read_hf_dir(hf_dir: str) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any] | None]:
  """(config.json, state dict as float32/... numpy arrays, preprocessor_config.json or None).

  Reads model.safetensors or the shards listed in model.safetensors.index.json; any float dtype
  (bf16 included, through JAX) is read exactly.
  """
  config_path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{hf_dir} has no {CONFIG_FILE}: not a transformers model directory")
  config = _read_json(config_path)
  index_path = os.path.join(hf_dir, WEIGHTS_INDEX_FILE)
  if os.path.exists(os.path.join(hf_dir, WEIGHTS_FILE)):
    files = [WEIGHTS_FILE]
  elif os.path.exists(index_path):
    files = sorted(set(_read_json(index_path)["weight_map"].values()))
  else:
    raise FileNotFoundError(f"{hf_dir} has neither {WEIGHTS_FILE} nor {WEIGHTS_INDEX_FILE} (only safetensors "
                            "checkpoints convert; re-save a .bin one with save_pretrained(safe_serialization=True))")
  st = _safetensors()
  state: dict[str, np.ndarray] = {}
  for name in files:
    for key, value in st.flax.load_file(os.path.join(hf_dir, name)).items():
      state[key] = np.asarray(value)
  preprocessor_path = os.path.join(hf_dir, PREPROCESSOR_FILE)
  preprocessor = _read_json(preprocessor_path) if os.path.exists(preprocessor_path) else None
  return config, state, preprocessor


def write_hf_dir(out_dir: str, config: Mapping[str, Any], state: Mapping[str, np.ndarray],
                 preprocessor: Mapping[str, Any] | None = None) -> None:
  os.makedirs(out_dir, exist_ok=True)
  _safetensors().numpy.save_file(dict(state), os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
  _write_json(os.path.join(out_dir, CONFIG_FILE), config)
  if preprocessor is not None:
    _write_json(os.path.join(out_dir, PREPROCESSOR_FILE), preprocessor)


def architecture_from_gin(embed_dim: int) -> Architecture:
  """Our configured modules' settings under the current gin config."""
  from mslam_jax.layers import conformer  # pylint: disable=g-import-not-at-top
  from mslam_jax.layers import frontend  # pylint: disable=g-import-not-at-top
  stack = conformer.ConformerStack()
  front = frontend.SpeechFrontend()
  projection = frontend.FeatureProjection(embed_dim=embed_dim)
  return Architecture(frontend_mode=front.mode, num_mel_bins=front.num_mel_bins, stack_stride=front.stack_stride,
                      projection_epsilon=projection.layer_norm_epsilon, block=stack.block_kwargs())


# -- whole checkpoints -----------------------------------------------------------------------------

DEFAULT_SIZE_GIN = "models/w2vbert2_600m.gin"
CONVERTED_STEP = 0
# The source's config files, kept beside the converted checkpoint: to-hf starts from them, so that
# the settings we do not model (dropouts, SpecAugment, ...) survive a round trip.
HF_CONFIG_COPY = "hf_config.json"
HF_PREPROCESSOR_COPY = "hf_preprocessor_config.json"
CONVERSION_INFO = "conversion.json"

_OPERATIVE_HEADER = """\
# Written by `mslam convert from-hf` (source: {source}).
# The converted weights are the step-{step} checkpoint of this directory: use it as a run directory,
#   mslam finetune --model_dir={out} --corpus_dir=CORPUS --out=OUT \\
#     --gin_file=runs/finetune_from_w2vbert2.gin
import mslam_jax.models.mslam
import mslam_jax.train

"""


def _register_configurables() -> None:
  # The MSLAMModel and `train` configurables (train.model names the model for eval/finetune).
  import mslam_jax.models.mslam  # pylint: disable=g-import-not-at-top,unused-import
  import mslam_jax.train  # pylint: disable=g-import-not-at-top,unused-import


def from_hf(hf_dir: str, out_dir: str, *, gin_files: Sequence[str] = (DEFAULT_SIZE_GIN,),
            bindings: Sequence[str] = (), num_shared_layers: int | None = None,
            search_paths: Sequence[str] = (), seed: int = 0) -> dict[str, Any]:
  """HF Wav2Vec2BertModel directory -> an mSLAM run directory holding one checkpoint.

  The model is MSLAMModel as the gin files configure it, with the architecture bindings the HF
  config implies (gin_bindings_from_hf), then `bindings`; the HF layers fill speech_lower,
  speech_upper and shared in order (the top `num_shared_layers` - default: the gin config's
  MSLAMEncoder.num_shared_layers - are shared). Parameters HF does not have (text embedding,
  quantizer, heads) keep their initialization from `seed`. Writes OUT/checkpoints/0/state,
  OUT/operative_config.gin and the source's config files. Clears and sets the gin config.
  """
  config_path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(f"{hf_dir} has no {CONFIG_FILE}: not a transformers model directory")
  preprocessor_path = os.path.join(hf_dir, PREPROCESSOR_FILE)
  preprocessor = _read_json(preprocessor_path) if os.path.exists(preprocessor_path) else None
  # The config is checked before anything heavy is read or imported.
  hf_bindings = gin_bindings_from_hf(_read_json(config_path), preprocessor, num_shared_layers)

  import gin  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from flax.core import meta  # pylint: disable=g-import-not-at-top

  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from mslam_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.models import encoder as encoder_lib  # pylint: disable=g-import-not-at-top

  hf_config, state, preprocessor = read_hf_dir(hf_dir)
  num_layers = int(hf_config.get("num_hidden_layers", 24))

  _register_configurables()
  gin.clear_config()
  config_lib.parse_gin(gin_files, hf_bindings + list(bindings), search_paths)
  shared = encoder_lib.MSLAMEncoder().num_shared_layers
  gin.parse_config_files_and_bindings(
      [], speech_layer_bindings(num_layers, shared) + ["train.model = @MSLAMModel()"], finalize_config=False)

  model = config_lib.build_model()
  enc = model.encoder
  logging.info("Converting %s: %d layers -> speech_lower %d, speech_upper %d, shared %d", hf_dir, num_layers,
               enc.num_contrastive_layers, enc.num_speech_layers - enc.num_contrastive_layers, enc.num_shared_layers)
  # An RBG key: its random bits compile to one XLA op per parameter instead of threefry's hash
  # rounds, which halves the compile of the init (these values only fill what HF does not have).
  params = meta.unbox(model.init(jax.random.key(seed, impl="rbg"), model.dummy_batch()))
  params = dict(jax.device_get(params))
  params["encoder"] = encoder_from_hf(params["encoder"], state)

  # The run directory may be remote (gs://...); the Hugging Face directory is read locally.
  epath.Path(out_dir).mkdir(parents=True, exist_ok=True)
  step_dir = checkpoints.save_params_checkpoint(out_dir, params, CONVERTED_STEP)
  config_lib.write_operative_config(out_dir, _OPERATIVE_HEADER.format(
      source=os.path.abspath(hf_dir), step=CONVERTED_STEP, out=checkpoints.absolute(out_dir)) + gin.config_str())
  _write_json(os.path.join(out_dir, HF_CONFIG_COPY), hf_config)
  if preprocessor is not None:
    _write_json(os.path.join(out_dir, HF_PREPROCESSOR_COPY), preprocessor)
  sizes = stack_sizes(params["encoder"])
  info = {"source": os.path.abspath(hf_dir), "checkpoint": step_dir, "hf_tensors": len(state),
          "hf_parameters": int(sum(np.size(v) for v in state.values())),
          "model_parameters": int(sum(np.size(v) for v in jax.tree.leaves(params))), "stacks": sizes}
  _write_json(os.path.join(out_dir, CONVERSION_INFO), info)
  logging.info("Wrote %s (%d HF tensors placed; stacks %s)", step_dir, len(state), sizes)
  return info


def to_hf(checkpoint: str, out_dir: str, *, step: int | None = None, gin_files: Sequence[str] = (),
          bindings: Sequence[str] = (), search_paths: Sequence[str] = ()) -> dict[str, Any]:
  """The speech encoder of a checkpoint (frontend, speech-only and shared stacks) -> an HF
  Wav2Vec2BertModel directory (config.json, model.safetensors, preprocessor_config.json).

  The architecture comes from the run's operative_config.gin (then `gin_files`, `bindings`).
  Clears and sets the gin config.
  """
  import gin  # pylint: disable=g-import-not-at-top

  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from mslam_jax import config as config_lib  # pylint: disable=g-import-not-at-top

  run_dir, step_dir = checkpoints.resolve_checkpoint(checkpoint, step)
  _register_configurables()
  if run_dir is None or config_lib.read_operative_config(run_dir) is None:
    if not gin_files:
      raise FileNotFoundError(f"no {config_lib.OPERATIVE_CONFIG} for {step_dir}: pass the model's size file (--gin_file)")
  config_lib.parse_run_config(run_dir or step_dir, gin_files, bindings, search_paths)
  params = checkpoints.load_params(step_dir)
  if "encoder" not in params:
    raise ValueError(f"{step_dir} holds no params/encoder (keys: {sorted(params)})")
  encoder_params = _copy_tree(params["encoder"])
  embed_dim = int(np.shape(_get(encoder_params, "speech_projection/projection/kernel"))[-1])
  arch = architecture_from_gin(embed_dim)

  def base(name: str) -> dict[str, Any] | None:
    path = os.path.join(run_dir, name) if run_dir else ""
    return _read_json(path) if path and epath.Path(path).exists() else None

  config = hf_config_from_architecture(arch, encoder_params, base(HF_CONFIG_COPY))
  hf_state = encoder_to_hf(encoder_params, include_mask_embedding=mask_embedding_in_hf(config))
  write_hf_dir(out_dir, config, hf_state, preprocessor_config(arch, base(HF_PREPROCESSOR_COPY)))
  logging.info("Wrote %s (%d tensors, %d layers) from %s", out_dir, len(hf_state), config["num_hidden_layers"],
               step_dir)
  return {"checkpoint": step_dir, "hf_tensors": len(hf_state), "num_hidden_layers": config["num_hidden_layers"],
          "hf_parameters": int(sum(np.size(v) for v in hf_state.values()))}
