"""Retrieval metrics, the language-ID probe and the embedding map on synthetic embeddings."""
import numpy as np
import pytest

from mslam_jax.evaluation import embedding_map, langid, retrieval


def test_identical_embeddings_retrieve_perfectly():
  x = np.random.default_rng(0).normal(size=(50, 16))
  m = retrieval.speech_text_retrieval(x, x.copy())
  assert m["retrieval_r1_speech_to_text"] == 1.0
  assert m["retrieval_r1_text_to_speech"] == 1.0
  assert m["retrieval_mrr_speech_to_text"] == 1.0


def test_shuffled_embeddings_retrieve_at_chance():
  rng = np.random.default_rng(1)
  n = 400
  x = rng.normal(size=(n, 32))
  m = retrieval.speech_text_retrieval(x, x[rng.permutation(n)])
  assert m["retrieval_r1_speech_to_text"] < 5 / n + 0.01
  assert m["retrieval_r5_speech_to_text"] < 0.05
  assert m["retrieval_chance_r1"] == pytest.approx(1 / n)


def test_collapsed_encoder_scores_zero_not_one():
  x = np.ones((10, 4))
  assert retrieval.retrieval_metrics(x, x, center=False)["r1"] == 0.0


def test_noisy_partners_and_per_language_scores():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(60, 32))
  y = x + 0.3 * rng.normal(size=x.shape)
  langs = ["eng"] * 30 + ["deu"] * 30
  m = retrieval.speech_text_retrieval(x, y, langs)
  assert m["retrieval_r1_speech_to_text"] > 0.9
  assert m["retrieval_r5_speech_to_text"] >= m["retrieval_r1_speech_to_text"]
  assert set(k for k in m if "/" in k) == {f"retrieval_r1_{d}/{l}" for d in ("speech_to_text", "text_to_speech")
                                          for l in ("eng", "deu")}


def test_held_out_languages_are_scored_apart_from_the_seen_ones_in_one_pool():
  """A held-out language whose speech lands off its transcripts scores apart (`*_heldout`), the
  others keep theirs (`*_seen`); the pool, and so the overall R@1, is still every language's."""
  rng = np.random.default_rng(4)
  x = rng.normal(size=(60, 32))
  y = x.copy()
  y[40:] = rng.normal(size=(20, 32))  # "swa": no relation between its speech and text
  langs = ["eng"] * 20 + ["deu"] * 20 + ["swa"] * 20
  m = retrieval.speech_text_retrieval(x, y, langs, held_out=["swa", "afr"])
  for d in ("speech_to_text", "text_to_speech"):
    assert m[f"retrieval_r1_{d}_seen"] == 1.0 and m[f"retrieval_r1_{d}_heldout"] < 0.2
    assert m[f"retrieval_r1_{d}"] == pytest.approx((40 + 20 * m[f"retrieval_r1_{d}_heldout"]) / 60)
  assert not any(k.endswith(("_seen", "_heldout")) for k in retrieval.speech_text_retrieval(x, y, langs))


def test_a_second_stage_reorders_only_the_shortlist():
  """reranked_ranks: the cost decides the order within each query's top-k by similarity (equal
  costs keep the similarity order); a partner outside the top-k keeps its rank, behind them."""
  sim = np.array([[0.1, 0.9, 0.8, 0.7, 0.0],    # partner 0 is 4th by similarity: outside a top-3
                  [0.2, 0.5, 0.9, 0.8, 0.0],    # partner 1 is 3rd: the cost makes it 1st
                  [0.3, 0.4, 0.9, 0.8, 0.0],    # partner 2 is 1st: candidate 3 costs less
                  [0.9, 0.4, 0.1, 0.8, 0.0],    # partner 3 is 2nd: equal costs, it stays 2nd
                  [0.0, 0.0, 0.0, 0.0, 1.0]])
  cost = {(1, 1): 0.1, (2, 2): 0.5, (2, 3): 0.4}
  seen = []
  def pair_cost(pairs):
    seen.extend(map(tuple, pairs))
    return np.array([cost.get(tuple(p), 1.0) for p in pairs])
  r = retrieval.reranked_ranks(sim, pair_cost, top_k=3)
  assert r.tolist() == [3, 0, 1, 1, 0]
  assert len(seen) == 15 and (0, 0) not in seen  # only shortlisted pairs are scored


def test_ctc_costs_prefer_the_transcript_the_clip_spells():
  """ctc_costs: a clip whose CTC head spells "3 4 5" scores that transcript far below one
  character off or one character short, per character (blank id 0)."""
  vocab, spelled = 8, [3, 4, 5]
  log_probs = np.full((9, vocab), np.log(0.01 / (vocab - 1)), np.float32)
  for t, token in enumerate([0, 3, 0, 4, 0, 0, 5, 0, 0]):
    log_probs[t, token] = np.log(0.99)
  other = np.full((6, vocab), -np.log(vocab), np.float32)  # a clip that says nothing in particular
  texts = [spelled, [3, 4, 6], [3, 4], [3, 4, 5, 5]]
  pairs = np.array([[0, i] for i in range(len(texts))] + [[1, 0]])
  costs = retrieval.ctc_costs([log_probs, other], texts, pairs, blank_id=0, batch_size=2)
  assert costs[0] < 0.1 and all(costs[0] + 1.0 < c for c in costs[1:4])
  assert costs[4] > costs[0] + 1.0  # the same transcript, from a clip that does not spell it


def test_ctc_costs_batch_a_small_pool_to_a_power_of_two_with_the_same_costs(monkeypatch):
  """A pool's pairs in three length buckets go in batches of 8 rows (the smallest power of two that
  holds each bucket's pairs), not `batch_size` rows, and score as a batch of 2 does."""
  rng = np.random.default_rng(0)
  logits = [rng.normal(size=(t, 6)).astype(np.float32) for t in (12, 80, 150)]  # 64, 128, 192 frames
  log_probs = [x - np.log(np.exp(x).sum(-1, keepdims=True)) for x in logits]
  texts = [rng.integers(1, 6, size=n).tolist() for n in (3, 5, 9)]  # 64 characters
  pairs = np.array([[c, t] for c in range(3) for t in range(3)])
  program, rows = retrieval._pair_cost_program(0), []  # pylint: disable=protected-access

  def recorded(blank_id):
    del blank_id

    def cost(*args):
      rows.append(len(args[-1]))
      return program(*args)
    return cost

  monkeypatch.setattr(retrieval, "_pair_cost_program", recorded)
  costs = retrieval.ctc_costs(log_probs, texts, pairs, blank_id=0)
  assert rows == [8, 8, 8]
  rows.clear()
  small = retrieval.ctc_costs(log_probs, texts, pairs, blank_id=0, batch_size=2)
  assert rows == [2, 2] + [2, 2] + [2, 2]  # three pairs a bucket, two rows a batch
  np.testing.assert_allclose(costs, small, rtol=1e-6)
  assert np.all(np.isfinite(costs))


def test_two_stage_figures_sit_beside_the_embedding_ones():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(40, 16))
  y = x + 1.5 * rng.normal(size=x.shape)  # a weak embedding
  langs = ["eng"] * 30 + ["swa"] * 10
  exact = lambda pairs: (pairs[:, 0] != pairs[:, 1]).astype(float)  # a second stage that knows
  m = retrieval.speech_text_retrieval(x, y, langs, held_out=["swa"], pair_cost=exact, rerank_top_k=40)
  for d in ("speech_to_text", "text_to_speech"):
    assert m[f"retrieval_r1_{d}"] < 0.9 and m[f"retrieval_r1_{d}_ctc_rerank"] == 1.0
    assert m[f"retrieval_r1_{d}_ctc_rerank_seen"] == m[f"retrieval_r1_{d}_ctc_rerank_heldout"] == 1.0
  assert not any(k.endswith("_ctc_rerank") for k in retrieval.speech_text_retrieval(x, y, langs))


def test_an_embedding_of_duration_alone_scores_at_chance_among_clips_of_similar_duration():
  rng = np.random.default_rng(3)
  seconds = rng.uniform(1.0, 5.0, size=400)
  # Both modalities encode only how long the utterance is (plus noise): ranking the whole pool by
  # it beats chance many times over, yet among clips of about the same duration it is a guess.
  # Each modality knows the duration to about 0.2 s (a transcript's length says how long it is spoken);
  # Fourier features of it, so that cosine similarity falls with the gap.
  freqs = np.array([0.5, 1.0, 2.0])
  def duration_only():
    guess = seconds + 0.2 * rng.normal(size=seconds.shape)
    return np.concatenate([np.cos(guess[:, None] * freqs), np.sin(guess[:, None] * freqs)], 1)
  m = retrieval.speech_text_retrieval(duration_only(), duration_only(), seconds=seconds)
  chance = m["retrieval_chance_r1_similar_duration"]
  assert 5 * m["retrieval_chance_r1"] < chance < 0.05  # the window holds some 60 clips of 400
  for direction in ("speech_to_text", "text_to_speech"):
    assert m[f"retrieval_r1_{direction}"] > 4 * m["retrieval_chance_r1"]
    assert m[f"retrieval_r1_{direction}_similar_duration"] < 2 * chance
  # Content survives the window: partners that share their own content keep their R@1 there.
  x = rng.normal(size=(400, 16))
  m = retrieval.speech_text_retrieval(x, x + 0.1 * rng.normal(size=x.shape), seconds=seconds)
  assert m["retrieval_r1_speech_to_text_similar_duration"] >= m["retrieval_r1_speech_to_text"] > 0.9


def _clusters(rng, n_per, centers, noise):
  x = np.concatenate([c + noise * rng.normal(size=(n_per, centers.shape[1])) for c in centers])
  labels = np.repeat([f"l{i}" for i in range(len(centers))], n_per)
  return x, labels


def test_probe_separates_languages_and_reloads(tmp_path):
  rng = np.random.default_rng(3)
  centers = rng.normal(size=(4, 8)) * 3
  train_x, train_y = _clusters(rng, 40, centers, 0.5)
  test_x, test_y = _clusters(rng, 20, centers, 0.5)
  png, probe_path = tmp_path / "cm.png", tmp_path / "probe.npz"
  m = langid.probe_metrics(train_x, train_y, test_x, test_y, "speech", str(png), str(probe_path),
                           features="statistics")
  assert m["langid_accuracy_speech"] > 0.95
  assert m["langid_macro_f1_speech"] > 0.95
  assert png.read_bytes()[:4] == b"\x89PNG"
  reloaded = langid.LinearProbe.load(str(probe_path))
  assert reloaded.features == "statistics"  # `mslam langid` computes the features the probe was fit on
  assert (reloaded.predict(test_x) == test_y).mean() > 0.95
  assert reloaded.predict_proba(test_x).sum(-1) == pytest.approx(np.ones(len(test_x)))


def test_lda_probe_is_sklearns_classifier_and_reloads_as_one(tmp_path):
  from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
  rng = np.random.default_rng(7)
  centers = rng.normal(size=(5, 12))
  train_x, train_y = _clusters(rng, 30, centers, 1.0)
  test_x, test_y = _clusters(rng, 20, centers, 1.0)
  probe = langid.LinearProbe(classifier="lda", features="statistics").fit(train_x, train_y)
  # The saved linear form decides as scikit-learn's LDA does (LDA is affine-invariant: the
  # standardisation changes nothing), and its probabilities are LDA's posteriors.
  reference = LinearDiscriminantAnalysis(solver="svd").fit(train_x, train_y)
  np.testing.assert_array_equal(probe.predict(test_x), reference.predict(test_x))
  np.testing.assert_allclose(probe.predict_proba(test_x), reference.predict_proba(test_x), atol=1e-6)
  assert (probe.predict(test_x) == test_y).mean() > 0.8
  probe.units = [7, 9, 30]  # what `mslam langid` needs to compute phonotactic features again
  probe.save(str(tmp_path / "probe.npz"))
  reloaded = langid.LinearProbe.load(str(tmp_path / "probe.npz"))
  assert reloaded.classifier == "lda" and reloaded.units == [7, 9, 30]
  np.testing.assert_array_equal(reloaded.predict(test_x), reference.predict(test_x))
  with pytest.raises(ValueError, match="qda"):
    langid.LinearProbe(classifier="qda")
  with pytest.raises(ValueError, match="speech_probe"):
    langid.LangIDEvaluator(speech_probe="svm")


def test_probe_on_noise_is_near_chance():
  rng = np.random.default_rng(4)
  labels = np.repeat(["a", "b", "c", "d"], 50)
  m = langid.probe_metrics(rng.normal(size=(200, 8)), labels, rng.normal(size=(200, 8)), labels, "p")
  assert m["langid_accuracy_p"] < 0.45


def test_binary_probe():
  rng = np.random.default_rng(5)
  x = np.concatenate([rng.normal(size=(30, 3)) + 4, rng.normal(size=(30, 3)) - 4])
  y = np.repeat(["eng", "fra"], 30)
  probe = langid.LinearProbe().fit(x, y)
  assert (probe.predict(x) == y).all()


def test_embedding_map(tmp_path):
  rng = np.random.default_rng(6)
  x = rng.normal(size=(40, 8))
  x[:, 0] *= 10  # one dominant direction
  path = tmp_path / "map.png"
  out = embedding_map.plot_embedding_map(str(path), x, ["eng", "deu"] * 20, ["speech"] * 20 + ["text"] * 20)
  assert path.read_bytes()[:4] == b"\x89PNG"
  assert out["embedding_map_pc1_variance"] > 0.8
