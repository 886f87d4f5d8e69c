"""Where the zero-shot error lies: hearing or spelling, on one pre-training run with the phone objectives.

  python benchmarks/zero_shot_probe.py --model_dir DIR [--corpus_dir DIR] [--steps 1600] [--per-lang 50] [--json]

The run must have phone inputs, phone CTC and phone-level text injection
(`--gin_file=experiments/phone_ctc.gin --gin_file=experiments/phone_injection.gin`). Its test clips
of the held-out languages (and, for comparison, of the training languages) are scored three ways:

  hearing   the phone error rate (PER) of a phone recognizer: a copy of the run's speech side
            (frontend and speech-only stack) and an untied copy of its phone CTC head (the phone
            embedding), fine-tuned with phone CTC on the training languages' paired train clips
            (their transcripts' eSpeak phones), on FinetuneConfig's defaults of the learning
            benchmark (`--steps` of 8 clips up to 5 s, Adam at 6e-3, 30 warm-up steps, cosine
            decay, clipped at 1). Also over segments alone (stress and length marks left out):
            where eSpeak puts stress is a rule of each language, not something heard.
  spelling  the CER of the run's own phone-injection path (phone embedding, each phone repeated
            `text_ctc_upsample` times, shared stack, CTC head: what text CTC over phones trained
            on every language's text, the held-out ones' included) writing each transcript's
            reference phones: the CER a perfect phone recognizer would give.
  cascade   the CER of that path writing the recognizer's phones (greedy decoding throughout).

A held-out PER far above the training languages' says the acoustic side does not carry over,
whatever the text side knows; a spelling CER far below the ordinary zero-shot CER says the text
side does know the held-out languages' spelling. No held-out transcript or clip trains anything.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diagnosed_run  # pylint: disable=g-import-not-at-top,wrong-import-position

SEED = 0
BUCKETS_S = (2.0, 3.0, 4.0, 5.0)   # the fine-tuning batches' audio lengths (FinetuneConfig.length_buckets)
MAX_PHONES = 192                   # label room of a 5 s clip's phones (eSpeak: ~20 a second)
SUPRASEGMENTALS = "ˈˌːˑ"           # stress and length marks of eSpeak's IPA


def segments(ipa: str) -> str:
  """IPA without stress and length marks (the phone inventory's segments and word boundaries)."""
  return "".join(ch for ch in ipa if ch not in SUPRASEGMENTALS)


def check_run(model) -> None:
  """Exit 2, naming what is missing, unless the run has phone inputs and phone-level injection."""
  net = model.network
  if not (net.encoder.phone_inputs and net.text_ctc_input == "phones"):
    diagnosed_run.refuse("zero_shot_probe: the run needs phone inputs and phone-level text injection: pre-train "
                         "with --gin_file=experiments/phone_ctc.gin --gin_file=experiments/phone_injection.gin")


class Probe:
  """The run's pre-trained parameters and the pieces the three figures read."""

  def __init__(self, model, params):
    import flax  # pylint: disable=g-import-not-at-top
    import jax  # pylint: disable=g-import-not-at-top
    self.model, self.params = model, flax.core.meta.unbox(params)
    self.dim = model.network.encoder.embed_dim
    self.upsample = model.network.text_ctc_upsample
    self._spell = jax.jit(lambda p, ids, mask: model.network.apply({"params": p}, ids, mask, method=self._spell_fn))
    self._hear = jax.jit(self.phone_logits)

  def recognizer(self) -> dict:
    """The recognizer's parameters before fine-tuning: the run's, and its phone table as the head."""
    return {"net": self.params,
            "head": self.params["encoder"]["phone_embedding"]["token_embedding"]["embedding"]}

  def phone_logits(self, recognizer: dict, audio, audio_mask):
    """The recognizer's phone logits [B, T, V] and frame mask [B, T]."""
    return self.model.network.apply({"params": recognizer["net"]}, audio, audio_mask, recognizer["head"],
                                    method=self._phone_logits_fn)

  def _phone_logits_fn(self, net, audio, audio_mask, head):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    enc = net.encoder
    features, mask = enc.speech_frontend(audio, audio_mask, True)
    _, speech_out = enc.speech_layers(enc.project_speech(features, True), mask, True)
    # TextEmbedding.attend's product, with the head as an argument so that it trains untied.
    return jnp.einsum("btd,vd->btv", speech_out, head.astype(speech_out.dtype)) / np.sqrt(self.dim), mask

  def _spell_fn(self, net, phone_ids, phones_mask):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    enc = net.encoder
    ids, mask = jnp.repeat(phone_ids, self.upsample, axis=1), jnp.repeat(phones_mask, self.upsample, axis=1)
    shared = enc.shared_layers(enc.embed_phones(ids, mask, True), mask, True)
    return jax.nn.log_softmax(net.ctc_head(shared).astype(jnp.float32), -1), mask

  def hear(self, recognizer: dict, audios, batch_size: int = 16) -> list[np.ndarray]:
    """Greedy phone ids of each clip."""
    from mslam_jax.evaluation import asr  # pylint: disable=g-import-not-at-top
    from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
    out = []
    for _, rows in eval_data._batches(list(audios), batch_size):  # pylint: disable=protected-access
      audio, mask = eval_data.pad_audio(rows, batch_size, eval_data.SAMPLE_RATE)
      logits, frames = self._hear(recognizer, audio, mask)
      out += [np.asarray(ids, np.int32) for ids in asr.decode_batch(logits[:len(rows)], frames[:len(rows)])]
    return out

  def spell(self, phone_lists, vocab, batch_size: int = 16) -> list[str]:
    """Each phone sequence written out in characters by the injection path (greedy)."""
    from mslam_jax.data import phones  # pylint: disable=g-import-not-at-top
    from mslam_jax.evaluation import asr  # pylint: disable=g-import-not-at-top
    from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
    out = []
    for _, rows in eval_data._batches(list(phone_lists), batch_size):  # pylint: disable=protected-access
      rows = [r if len(r) else np.array([phones.WORD_BOUNDARY_ID], np.int32) for r in rows]
      ids, mask = eval_data.pad_tokens(rows, batch_size, 32)
      log_probs, frames = self._spell(self.params, ids, mask)
      out += [asr.ids_to_text(vocab, ids) for ids in asr.decode_batch(log_probs[:len(rows)], frames[:len(rows)])]
    return out

  def phone_ctc_loss(self, recognizer: dict, audio, audio_mask, labels, labels_mask):
    """Phone CTC per phone over the rows whose phones fit their frames, and the share that fit."""
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    from mslam_jax.evaluation import asr  # pylint: disable=g-import-not-at-top
    logits, mask = self.phone_logits(recognizer, audio, audio_mask)
    per_row = optax.ctc_loss(logits.astype(jnp.float32), 1.0 - mask, labels, 1.0 - labels_mask,
                             blank_id=asr.BLANK_ID)
    fits = (per_row < 1e4).astype(jnp.float32)  # optax gives ~1e5 where the frames cannot hold the labels
    return jnp.sum(per_row * fits) / jnp.maximum(jnp.sum(jnp.sum(labels_mask, 1) * fits), 1.0), jnp.mean(fits)

  def finetune(self, clips, steps: int, batch_size: int = 8, rate: float = 6e-3, warmup: int = 30,
               seed: int = SEED, progress: bool = True) -> tuple[dict, list[float]]:
    """The recognizer fine-tuned on `clips` (Utterances with phones, at most BUCKETS_S[-1] s), and
    its loss at every step."""
    import jax  # pylint: disable=g-import-not-at-top
    import optax  # pylint: disable=g-import-not-at-top
    import tqdm  # pylint: disable=g-import-not-at-top
    from mslam_jax.data import phones  # pylint: disable=g-import-not-at-top
    from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
    rate_at = optax.warmup_cosine_decay_schedule(0.0, rate, warmup, max(steps, warmup + 1))
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(rate_at))
    recognizer = self.recognizer()
    state = tx.init(recognizer)

    @jax.jit
    def step(recognizer, state, *batch):
      (loss, _), grads = jax.value_and_grad(self.phone_ctc_loss, argnums=0, has_aux=True)(recognizer, *batch)
      updates, state = tx.update(grads, state, recognizer)
      return optax.apply_updates(recognizer, updates), state, loss

    sr = eval_data.SAMPLE_RATE
    bounds = [int(b * sr) for b in BUCKETS_S]
    bucket = np.array([next(i for i, b in enumerate(bounds) if len(c.audio) <= b) for c in clips])
    labels = [phones.encode(c.phones)[:MAX_PHONES] for c in clips]
    rng, losses = np.random.default_rng(seed), []
    bar = tqdm.tqdm(total=steps, unit="step", disable=not progress, desc="phone recognizer")
    start, heard = time.time(), 0.0
    for _ in range(steps):
      pool = np.flatnonzero(bucket == bucket[rng.integers(len(clips))])  # buckets drawn by their share
      idx = rng.choice(pool, batch_size, replace=len(pool) < batch_size)
      audio, audio_mask = eval_data.pad_audio([clips[i].audio for i in idx], batch_size, bounds[bucket[idx[0]]])
      ids, ids_mask = eval_data.pad_tokens([labels[i] for i in idx], batch_size, MAX_PHONES)
      recognizer, state, loss = step(recognizer, state, audio, audio_mask, ids, ids_mask.astype(np.float32))
      losses.append(float(loss))
      heard += audio_mask.sum() / sr
      bar.set_postfix(phone_ctc=f"{losses[-1]:.3f}", audio_s_per_s=f"{heard / (time.time() - start):.0f}")
      bar.update()
    bar.close()
    return recognizer, losses


def error_rates(references, hypotheses, langs) -> dict[str, float]:
  """The character error rate per language and over all ("all"), as the ASR evaluators give it."""
  from mslam_jax.evaluation import asr  # pylint: disable=g-import-not-at-top
  return {lang: rates["cer"] for lang, rates in asr.error_rates_by_language(references, hypotheses, langs).items()}


def probe(model_dir: str, corpus_dir: str | None = None, steps: int = 1600, per_lang: int = 50,
          batch_size: int = 8, progress: bool = True) -> dict:
  from mslam_jax.data import phones  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  model, params, step, corpus_dir = diagnosed_run.load(model_dir, corpus_dir)
  check_run(model)
  vocab = eval_data.load_vocabulary(corpus_dir)
  held, training = eval_data.held_out_languages(corpus_dir), eval_data.training_languages(corpus_dir)
  longest = int(BUCKETS_S[-1] * eval_data.SAMPLE_RATE)
  clips = [u for u in eval_data.read_utterances(corpus_dir, "paired", "train", training)
           if u.phones and 0 < len(u.audio) <= longest]
  if not clips:
    raise SystemExit(f"zero_shot_probe: {corpus_dir} has no training-language paired clips with phones")
  p = Probe(model, params)
  recognizer, losses = p.finetune(clips, steps, batch_size, progress=progress)
  out = {"model_dir": model_dir, "step": step, "recognizer_clips": len(clips),
         "recognizer_loss_first_last": [losses[0], float(np.mean(losses[-20:]))] if losses else [], "groups": {}}
  for group, langs in (("held-out", held), ("training", training)):
    tests = [u for u in eval_data.read_utterances(corpus_dir, "paired", "test", langs, per_lang) if u.phones]
    if not tests:
      continue
    reference = [phones.encode(u.phones) for u in tests]
    heard = p.hear(recognizer, [u.audio for u in tests])
    texts, langs_u = [u.text for u in tests], [u.lang for u in tests]
    ref_ipa, heard_ipa = [phones.decode(r) for r in reference], [phones.decode(h) for h in heard]
    out["groups"][group] = {
        "clips": len(tests),
        "per": error_rates(ref_ipa, heard_ipa, langs_u),
        "per_segments": error_rates([segments(r) for r in ref_ipa], [segments(h) for h in heard_ipa], langs_u),
        "spelling_cer": error_rates(texts, p.spell(reference, vocab), langs_u),
        "cascade_cer": error_rates(texts, p.spell(heard, vocab), langs_u)}
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  diagnosed_run.add_flags(parser, "a pre-training run with the phone objectives", "test clips of each language")
  parser.add_argument("--steps", type=int, default=1600, help="the phone recognizer's fine-tuning steps")
  args = parser.parse_args(argv)
  if args.steps < 0 or args.per_lang < 1:
    parser.error("--steps must be >= 0 and --per-lang >= 1")
  out = probe(args.model_dir, args.corpus_dir, args.steps, args.per_lang)
  if args.json:
    print(json.dumps(out, indent=2))
    return 0
  print(f"step {out['step']} of {out['model_dir']}; phone recognizer fine-tuned on {out['recognizer_clips']} clips, "
        f"phone CTC {out['recognizer_loss_first_last']}")
  print(f"{'languages':10s} {'clips':>5s} {'PER':>6s} {'PER, segments':>14s} {'spelling CER':>13s} {'cascade CER':>12s}")
  for group, f in out["groups"].items():
    for lang in f["per"]:
      name = f"{group}" if lang == "all" else f"  {lang}"
      print(f"{name:10s} {f['clips'] if lang == 'all' else '':>5} {f['per'][lang]:6.3f} {f['per_segments'][lang]:14.3f} "
            f"{f['spelling_cer'][lang]:13.3f} {f['cascade_cer'][lang]:12.3f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
