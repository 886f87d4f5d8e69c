"""Where speech->text retrieval is lost, on one pre-training run of the built-in corpus.

  python benchmarks/retrieval_diagnosis.py --model_dir DIR [--corpus_dir DIR] [--per-lang 50] [--json]

R@1 in both directions over a pool of `--per-lang` pairs of every language (cosine similarity of
the cross-modal embeddings, each modality centred: `RetrievalEvaluator`'s figure), for three pools:

  test                   the paired test split as the evaluation sweep reads it: sentences never
                         trained on, spoken by voice variants training never hears
                         (`espeak.EVAL_VARIANTS`)
  test, training voices  the same sentences spoken anew by training voice variants
                         (`espeak.TRAIN_VARIANTS`, a seeded random style each): the gap to `test`
                         is what unseen voices cost
  train                  training pairs (sentences and voices the run has seen): how well the
                         embedding fits its own data. Far below 1 with `test` close behind says the
                         encoder underfits; near 1 with `test` far behind, that it memorises.

For each pool, also the share of wrong first answers that are a transcript of another language,
and speech->text R@1 within a language (each clip against its own language's transcripts only):
far above the pool's R@1 says the embedding confuses languages more than sentences. And how much
of it rests on the clips' durations: the median duration gap between a clip and the clip of its
wrong first answer (against that of random pairs), and R@1 among the transcripts of clips within
`retrieval.DURATION_WINDOW_S` (0.3 s) of its own duration, where duration no longer tells them apart.
The second pool needs eSpeak (the built-in corpus' synthesizer); its clips are not written anywhere.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import diagnosed_run  # pylint: disable=g-import-not-at-top,wrong-import-position

SEED = 0


def pool_figures(encoder, vocab, items, audios) -> dict:
  """R@1 both ways and the wrong-language share of speech->text misses for one pool."""
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  speech = encoder.speech(audios)
  text = encoder.text(eval_data.tokenize(vocab, [u.text for u in items]))
  metrics = retrieval.speech_text_retrieval(speech, text)
  langs = np.array([u.lang for u in items])
  scores = retrieval.normalize(speech, True) @ retrieval.normalize(text, True).T
  best = np.argmax(scores, axis=1)
  miss = best != np.arange(len(items))
  seconds = np.array([len(a) for a in audios]) / eval_data.SAMPLE_RATE
  gaps = np.abs(seconds[:, None] - seconds[None, :])

  r1_among = lambda allowed: retrieval.r1_among(scores, allowed)  # speech->text, candidates limited
  return {"pairs": len(items),
          "r1_speech_to_text": metrics["retrieval_r1_speech_to_text"],
          "r1_text_to_speech": metrics["retrieval_r1_text_to_speech"],
          "misses_in_another_language": float(np.mean(langs[best][miss] != langs[miss])) if miss.any() else 0.0,
          "r1_speech_to_text_within_language": r1_among(langs[None, :] == langs[:, None]),
          "duration_gap_wrong_answer_s": float(np.median(gaps[miss, best[miss]])) if miss.any() else 0.0,
          "duration_gap_random_pair_s": float(np.median(gaps)),
          "r1_speech_to_text_similar_duration": r1_among(gaps <= retrieval.DURATION_WINDOW_S)}


def respeak(items, variants, seed: int = SEED):
  """(items, audios) of `items`' sentences spoken by random styles of `variants`; failures skipped."""
  from mslam_jax.data import espeak, languages  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  jobs = [(u.text, espeak.sample_style(rng, languages.get(u.lang).espeak_voices, variants)) for u in items]
  results = espeak.synthesize_all(espeak.synthesize, jobs)
  kept = [(u, r.audio) for u, r in zip(items, results) if not isinstance(r, espeak.EspeakError) and len(r.audio)]
  if len(kept) < len(items):
    print(f"{len(items) - len(kept)} of {len(items)} sentences could not be spoken; skipped")
  return [u for u, _ in kept], [a for _, a in kept]


def diagnose(model_dir: str, corpus_dir: str | None = None, per_lang: int = 50) -> dict:
  from mslam_jax.data import espeak  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  model, params, step, corpus_dir = diagnosed_run.load(model_dir, corpus_dir)
  vocab = eval_data.load_vocabulary(corpus_dir)
  encoder = eval_data.Encoder(model, params, cross_modal=True)
  read = lambda split: [u for u in eval_data.read_utterances(corpus_dir, "paired", split, None, per_lang)
                        if len(u.audio) and u.text.strip()]
  test, train = read("test"), read("train")
  out = {"model_dir": model_dir, "step": step, "pools": {}}
  out["pools"]["test"] = pool_figures(encoder, vocab, test, [u.audio for u in test])
  out["pools"]["test, training voices"] = pool_figures(encoder, vocab, *respeak(test, espeak.TRAIN_VARIANTS))
  out["pools"]["train"] = pool_figures(encoder, vocab, train, [u.audio for u in train])
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  diagnosed_run.add_flags(parser, "a pre-training run with cross-modal heads", "pairs of each language in every pool")
  args = parser.parse_args(argv)
  from mslam_jax.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  out = diagnose(args.model_dir, args.corpus_dir, args.per_lang)
  if args.json:
    print(json.dumps(out, indent=2))
    return 0
  print(f"step {out['step']} of {out['model_dir']}")
  print(f"{'pool':24s} {'pairs':>5s} {'R@1 s->t':>9s} {'R@1 t->s':>9s} {'misses in another language':>27s} "
        f"{'R@1 s->t within a language':>27s} {'duration gap, wrong answer / random':>36s} "
        f"{f'R@1 s->t within {retrieval.DURATION_WINDOW_S} s':>22s}")
  for name, f in out["pools"].items():
    gap = f"{f['duration_gap_wrong_answer_s']:.2f} s / {f['duration_gap_random_pair_s']:.2f} s"
    print(f"{name:24s} {f['pairs']:5d} {f['r1_speech_to_text']:9.3f} {f['r1_text_to_speech']:9.3f} "
          f"{f['misses_in_another_language']:27.2f} {f['r1_speech_to_text_within_language']:27.3f} {gap:>36s} "
          f"{f['r1_speech_to_text_similar_duration']:22.3f}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
