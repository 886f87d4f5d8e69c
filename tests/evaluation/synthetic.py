"""A synthetic corpus whose audio spells its text, and a tiny encoder with the model contract.

Every character is 80 ms of a sine at its own frequency (a space: 160 ms of silence), and each
language adds its own low hum, so CTC can be learned by a linear head, word timings are exact
and speech language ID is possible: evaluators must then reach known-good figures.
"""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from mslam_jax.data import records
from mslam_jax.data import vocabularies

FRAME_SAMPLES = 640  # the model's 40 ms frames
CHAR_MS = 80  # two frames per character, so that a repeated character still fits CTC's blank
CHAR_SAMPLES = 16 * CHAR_MS
LANG_ALPHABETS = {"aaa": "abcdef", "bbb": "defghi", "ccc": "abghij"}
HELD_OUT = ["ccc"]
LANG_HUM_HZ = {"aaa": 90.0, "bbb": 150.0, "ccc": 210.0}


def _char_hz(char: str) -> float:
  return 500.0 + 250.0 * (ord(char) - ord("a"))


def synthesize(text: str, lang: str) -> tuple[np.ndarray, list[str], list[int], list[int]]:
  t = np.arange(CHAR_SAMPLES) / 16000.0
  pieces, words, starts, ends = [], [], [], []
  for word_index, word in enumerate(text.split(" ")):
    if word_index:
      pieces.append(np.zeros(2 * CHAR_SAMPLES))  # pauses are longer than letters
    starts.append(sum(len(p) for p in pieces) // 16)
    for char in word:
      pieces.append(0.5 * np.sin(2 * np.pi * _char_hz(char) * t))
    ends.append(sum(len(p) for p in pieces) // 16)
    words.append(word)
  audio = np.concatenate(pieces)
  audio = audio + 0.1 * np.sin(2 * np.pi * LANG_HUM_HZ[lang] * np.arange(len(audio)) / 16000.0)
  return audio.astype(np.float32), words, starts, ends


def _text(rng, alphabet: str) -> str:
  words = ["".join(rng.choice(list(alphabet), size=rng.integers(2, 5))) for _ in range(rng.integers(2, 4))]
  return " ".join(words)


def write_corpus(directory: str, per_split: dict[str, int] | None = None, seed: int = 0) -> str:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  per_split = per_split or {"train": 24, "test": 8}
  rng = np.random.default_rng(seed)
  texts = []
  for stream in records.STREAMS:
    for lang, alphabet in LANG_ALPHABETS.items():
      for split, count in per_split.items():
        path = os.path.join(directory, records.shard_name(stream, lang, split, 0, 1))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with tf.io.TFRecordWriter(path) as writer:
          for i in range(count):
            text = _text(rng, alphabet)
            texts.append(text)
            utt = records.Utterance(id=f"{stream}-{lang}-{split}-{i}", lang=lang, text=text)
            if stream != "text":
              utt.audio, utt.words, utt.word_starts_ms, utt.word_ends_ms = synthesize(text, lang)
            writer.write(records.to_example_bytes(utt))
  vocabularies.CharacterVocabulary.build(texts).save(os.path.join(directory, "vocab"))
  with open(os.path.join(directory, "manifest.json"), "w") as f:
    json.dump({"held_out_languages": HELD_OUT, "languages": {l: {} for l in LANG_ALPHABETS}}, f)
  return directory


class SpectralModel:
  """encode_speech: |FFT| of 40 ms frames -> projection -> residual "shared" layers.

  encode_text: embedding -> the same shared layers. Parameters are laid out like a real encoder
  (a frontend, a stack `shared` of `layers_i` or a scanned `layers`), so freezing can be tested.
  """

  def __init__(self, dim: int = 32, vocab_size: int = 64, num_layers: int = 3, scanned: bool = False):
    self.dim, self.vocab_size, self.num_layers, self.scanned = dim, vocab_size, num_layers, scanned

  def init(self, rng, batch=None):
    del batch
    k = jax.random.split(rng, 3 + self.num_layers)
    bins = FRAME_SAMPLES // 2 + 1
    layers = [{"kernel": jax.random.normal(k[3 + i], (self.dim, self.dim)) * 0.1} for i in range(self.num_layers)]
    shared = ({"layers": jax.tree.map(lambda *x: jnp.stack(x), *layers)} if self.scanned
              else {f"layers_{i}": l for i, l in enumerate(layers)})
    return {"frontend": {"kernel": jax.random.normal(k[0], (bins, self.dim)) / np.sqrt(bins)},
            "text_embed": {"embedding": jax.random.normal(k[1], (self.vocab_size, self.dim))},
            "shared": shared}

  def _shared(self, params, x):
    if self.scanned:
      def body(h, layer):
        return h + jnp.tanh(h @ layer["kernel"]), None
      return jax.lax.scan(body, x, params["shared"]["layers"])[0]
    for i in range(self.num_layers):
      x = x + jnp.tanh(x @ params["shared"][f"layers_{i}"]["kernel"])
    return x

  @staticmethod
  def _pool(frames, mask):
    m = mask[..., None].astype(frames.dtype)
    return (frames * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

  def encode_speech(self, params, audio, audio_mask):
    b, s = audio.shape
    t = s // FRAME_SAMPLES
    frames = audio[:, :t * FRAME_SAMPLES].reshape(b, t, FRAME_SAMPLES)
    mask = audio_mask[:, :t * FRAME_SAMPLES].reshape(b, t, FRAME_SAMPLES).min(-1).astype(jnp.int32)
    feats = jnp.log1p(jnp.abs(jnp.fft.rfft(frames, axis=-1)))
    x = self._shared(params, feats @ params["frontend"]["kernel"])
    return x, mask, self._pool(x, mask)

  def encode_text(self, params, tokens, tokens_mask):
    x = self._shared(params, params["text_embed"]["embedding"][tokens])
    return x, tokens_mask, self._pool(x, tokens_mask)


import gin  # pylint: disable=g-import-not-at-top,wrong-import-position

gin.external_configurable(SpectralModel, module="synthetic")


def write_run(model_dir: str, corpus_dir: str, steps=(2, 4), dim: int = 64) -> None:
  """A fake pre-training run: checkpoints written by the trainer's Checkpointer + operative config."""
  import optax  # pylint: disable=g-import-not-at-top
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from mslam_jax import trainer  # pylint: disable=g-import-not-at-top
  vocab = vocabularies.CharacterVocabulary.load(os.path.join(corpus_dir, "vocab"))
  model = SpectralModel(dim=dim, vocab_size=vocab.vocab_size)
  ckpt = checkpoints.Checkpointer(os.path.join(model_dir, "checkpoints"), save_every=1, async_save=False)
  for step in steps:
    params = model.init(jax.random.PRNGKey(step))
    zero = jnp.zeros((), jnp.int32)
    state = trainer.TrainState(step=jnp.int32(step), params=params, opt_state=optax.sgd(0.1).init(params),
                               rng=jax.random.PRNGKey(0), nonfinite_count=zero, nonfinite_streak=zero)
    ckpt.save(step, state, {"position": step}, force=True)
  ckpt.close()
  with open(os.path.join(model_dir, "operative_config.gin"), "w") as f:
    f.write(f"""import tests.evaluation.synthetic
import mslam_jax.evaluation.registry
import mslam_jax.train

CORPUS_DIR = '{corpus_dir}'
MODEL_DIR = '{model_dir}'
train.model = @synthetic.SpectralModel()
train.model_dir = %MODEL_DIR
train.evaluators = @build_evaluators()
build_evaluators.names = []
synthetic.SpectralModel.dim = {dim}
synthetic.SpectralModel.vocab_size = {vocab.vocab_size}
""")
