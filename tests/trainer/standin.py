"""A tiny stand-in for MSLAMModel and the step iterator, with the same contracts, for trainer tests.

StandInModel: one attention + MLP block over framed audio and embedded characters, parameters
annotated with logical axes (embed, heads, kv, mlp, vocab, conv); loss_fn(params, batch, rng, step)
uses the rng (random frame masking) so that RNG handling is exercised too.
SyntheticIterator: deterministic batches of the three-stream contract; each process gets its rows
of the global batch; get_state()/set_state() hold the position.
"""
import time
from typing import Any, Sequence

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np

from mslam_jax.data import contract


def _init(names):
  return nn.with_logical_partitioning(nn.initializers.lecun_normal(), names)


def _zeros(names):
  return nn.with_logical_partitioning(nn.initializers.zeros_init(), names)


class Block(nn.Module):
  dim: int
  heads: int
  mlp: int

  @nn.compact
  def __call__(self, x, mask):
    head_dim = self.dim // self.heads
    y = nn.LayerNorm(scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                     bias_init=_zeros(("embed",)))(x)
    attn_mask = nn.make_attention_mask(mask, mask)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.heads, qkv_features=self.dim, use_bias=False,
        kernel_init=_init(("embed", "heads", "kv")),
        out_kernel_init=_init(("heads", "kv", "embed")))(y, y, mask=attn_mask)
    del head_dim
    x = nn.with_logical_constraint(x + y, ("batch", "length", "embed"))
    y = nn.Dense(self.mlp, kernel_init=_init(("embed", "mlp")), bias_init=_zeros(("mlp",)))(x)
    y = nn.with_logical_constraint(nn.gelu(y), ("batch", "length", "mlp"))
    y = nn.Dense(self.dim, kernel_init=_init(("mlp", "embed")), bias_init=_zeros(("embed",)))(y)
    return nn.with_logical_constraint(x + y, ("batch", "length", "embed"))


class Net(nn.Module):
  frame: int
  dim: int
  heads: int
  mlp: int
  vocab: int

  def setup(self):
    self.frame_in = nn.Dense(self.dim, kernel_init=_init(("conv", "embed")),
                             bias_init=_zeros(("embed",)))
    self.frame_out = nn.Dense(self.frame, kernel_init=_init(("embed", "conv")),
                              bias_init=_zeros(("conv",)))
    self.embed = nn.Embed(self.vocab, self.dim, embedding_init=_init(("vocab", "embed")))
    self.block = Block(self.dim, self.heads, self.mlp)

  def speech(self, frames, mask):
    return self.block(self.frame_in(frames), mask)

  def text(self, tokens, mask):
    return self.block(self.embed(tokens), mask)

  def __call__(self, frames, frame_mask, tokens, tokens_mask):
    h = self.speech(frames, frame_mask)
    return self.frame_out(h), self.embed.attend(self.text(tokens, tokens_mask))


def _frames(audio, audio_mask, frame):
  b, s = audio.shape
  frames = audio[:, : s // frame * frame].reshape(b, s // frame, frame)
  mask = audio_mask[:, : s // frame * frame].reshape(b, s // frame, frame).min(-1)
  return frames, mask


def _masked_mean(x, mask):
  mask = mask.astype(x.dtype)
  return (x * mask).sum() / jnp.maximum(mask.sum(), 1.0)


@gin.configurable
class StandInModel:
  """Follows MSLAMModel's contract: init(rng, batch) -> boxed params; loss_fn -> (loss, metrics)."""

  def __init__(self, frame: int = 16, dim: int = 16, heads: int = 2, mlp: int = 32,
               vocab: int = 32, mask_prob: float = 0.3):
    self.frame = frame
    self.mask_prob = mask_prob
    self.net = Net(frame=frame, dim=dim, heads=heads, mlp=mlp, vocab=vocab)

  def init(self, rng, batch):
    frames, frame_mask = _frames(batch["speech"]["audio"], batch["speech"]["audio_mask"],
                                 self.frame)
    return self.net.init(rng, frames, frame_mask, batch["text"]["tokens"],
                         batch["text"]["tokens_mask"])["params"]

  def loss_fn(self, params, batch, rng, step):
    del step
    variables = {"params": params}
    frames, frame_mask = _frames(batch["speech"]["audio"], batch["speech"]["audio_mask"],
                                 self.frame)
    hide = jax.random.bernoulli(rng, self.mask_prob, frame_mask.shape)
    inputs = jnp.where(hide[..., None], 0.0, frames)
    recon, logits = self.net.apply(variables, inputs, frame_mask, batch["text"]["tokens"],
                                   batch["text"]["tokens_mask"])
    speech_loss = _masked_mean(((recon - frames) ** 2).mean(-1), frame_mask * hide)
    # Text: predict each character from the sequence (a denoising-free stand-in for span MLM).
    tokens = batch["text"]["tokens"]
    ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
    text_loss = _masked_mean(ce, batch["text"]["tokens_mask"])
    # Paired: pooled projected frames should match pooled character embeddings (kept shallow:
    # a second pass through the block would double the program the tests compile).
    pf, pmask = _frames(batch["paired"]["audio"], batch["paired"]["audio_mask"], self.frame)
    hs = self.net.apply(variables, pf, method=lambda net, x: net.frame_in(x))
    ht = self.net.apply(variables, batch["paired"]["tokens"], method=lambda net, t: net.embed(t))
    pool = lambda h, m: (h * m[..., None]).sum(1) / jnp.maximum(m.sum(1, keepdims=True), 1)
    paired_loss = ((pool(hs, pmask) - pool(ht, batch["paired"]["tokens_mask"])) ** 2).mean()
    loss = speech_loss + 0.3 * text_loss + 0.1 * paired_loss
    return loss, {"speech_loss": speech_loss, "text_loss": text_loss,
                  "paired_loss": paired_loss}


@gin.configurable
class SyntheticIterator:
  """Deterministic three-stream batches: batch n of the global stream depends only on (seed, n)."""

  def __init__(self, shard_index: int = 0, num_shards: int = 1, *, speech_batch: int = 8,
               speech_samples: int = 256, text_batch: int = 8, text_length: int = 12,
               paired_batch: int = 8, paired_samples: int = 128, paired_length: int = 8,
               vocab: int = 32, seed: int = 0, nan_at: Sequence[int] = (), delay_s: float = 0.0):
    self.shard_index, self.num_shards = shard_index, num_shards
    self.sizes = dict(speech_batch=speech_batch, speech_samples=speech_samples,
                      text_batch=text_batch, text_length=text_length, paired_batch=paired_batch,
                      paired_samples=paired_samples, paired_length=paired_length)
    self.vocab, self.seed, self.nan_at = vocab, seed, set(nan_at)
    self.delay_s = delay_s  # slows steps down so that tests can signal a run mid-training
    self.position = 0

  @property
  def global_element_spec(self) -> dict[str, Any]:
    """The global batch's structure, from the batch contract (as the real iterator's)."""
    z = self.sizes
    return contract.batch_spec({
        "speech": (z["speech_batch"], contract.stream_lengths("speech", z["speech_samples"], 0)),
        "text": (z["text_batch"], contract.stream_lengths("text", 0, z["text_length"])),
        "paired": (z["paired_batch"], contract.stream_lengths("paired", z["paired_samples"], z["paired_length"]))})

  def get_state(self) -> dict:
    return {"position": self.position, "config": {**self.sizes, "seed": self.seed}}

  def set_state(self, state: dict) -> None:
    # As the real iterator does: a state of other batches (another seed or size) is refused.
    for key, value in state.get("config", {}).items():
      mine = self.sizes.get(key, self.seed if key == "seed" else None)
      if mine != value:
        raise ValueError(f"data config changed since the state was saved: SyntheticIterator.{key} "
                         f"{value} -> {mine}")
    self.position = int(state["position"])

  def __iter__(self):
    return self

  def global_batch(self, position: int) -> dict[str, Any]:
    r = np.random.default_rng([self.seed, position])
    z = self.sizes

    def audio(b, s):
      lengths = r.integers(s // 2, s + 1, size=b)
      mask = (np.arange(s)[None] < lengths[:, None]).astype(np.int32)
      return (r.uniform(-0.5, 0.5, (b, s)) * mask).astype(np.float32), mask

    def text(b, l):
      lengths = r.integers(l // 2, l + 1, size=b)
      mask = (np.arange(l)[None] < lengths[:, None]).astype(np.int32)
      return (r.integers(5, self.vocab, (b, l)) * mask).astype(np.int32), mask

    sa, sm = audio(z["speech_batch"], z["speech_samples"])
    tt, tm = text(z["text_batch"], z["text_length"])
    pa, pm = audio(z["paired_batch"], z["paired_samples"])
    pt, ptm = text(z["paired_batch"], z["paired_length"])
    if position in self.nan_at:
      sa[0, 0] = np.nan
    lang = lambda b: r.integers(0, 4, size=b).astype(np.int32)
    batch = {"speech": {"audio": sa, "audio_mask": sm, "lang": lang(z["speech_batch"])},
             "text": {"tokens": tt, "tokens_mask": tm, "lang": lang(z["text_batch"])},
             "paired": {"audio": pa, "audio_mask": pm, "tokens": pt, "tokens_mask": ptm,
                        "lang": lang(z["paired_batch"])}}
    # Shapes and dtypes are the contract's, by construction (a drift fails here, not in the step).
    spec = self.global_element_spec
    assert jax.tree.structure(batch) == jax.tree.structure(spec) and all(
        x.shape == s.shape and x.dtype == s.dtype for x, s in zip(jax.tree.leaves(batch), jax.tree.leaves(spec)))
    return batch

  def __next__(self) -> dict[str, Any]:
    if self.delay_s:
      time.sleep(self.delay_s)
    batch = self.global_batch(self.position)
    self.position += 1

    def rows(x):
      per = x.shape[0] // self.num_shards
      return x[self.shard_index * per:(self.shard_index + 1) * per]

    return jax.tree.map(rows, batch)


@gin.configurable
class ParamNormEvaluator:
  """A trainer-hook evaluator: the global norm of the parameters it is handed."""
  name = "param_norm_probe"

  def evaluate(self, ctx):
    return {"probe_param_norm": float(jnp.sqrt(sum(jnp.sum(jnp.square(x))
                                                   for x in jax.tree.leaves(ctx.params)))),
            "probe_step": ctx.step}


@gin.configurable
class BrokenEvaluator:
  """An evaluator that always fails: the run must log it and go on."""
  name = "broken"

  def evaluate(self, ctx):
    raise RuntimeError("this evaluator always fails")
