"""A 2-D map of pooled embeddings (PCA), coloured by language, marked by modality."""
import os
from typing import Sequence

import gin
import numpy as np

from mslam_jax import storage
from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import base

_MARKERS = {"speech": "o", "text": "^", "paired_speech": "s", "paired_text": "D"}


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Projection onto the first two principal components and their explained variance ratios."""
  from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
  pca = PCA(n_components=2, svd_solver="full").fit(np.asarray(x, np.float64))
  return pca.transform(np.asarray(x, np.float64)), pca.explained_variance_ratio_


def plot_embedding_map(path: str, embeddings: np.ndarray, langs: Sequence[str], modalities: Sequence[str],
                       title: str = "Pooled embeddings (PCA)", center_per_modality: bool = False) -> dict[str, float]:
  """Writes the PNG; returns the explained variance of both components.

  With `center_per_modality`, each modality's mean is removed first so that the map shows how
  languages spread within and across modalities rather than the offset between modalities.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  x = np.asarray(embeddings, np.float64)
  modalities_arr, langs_arr = np.asarray(modalities), np.asarray(langs)
  if center_per_modality:
    x = x.copy()
    for m in set(modalities):
      x[modalities_arr == m] -= x[modalities_arr == m].mean(axis=0)
  points, ratio = pca_2d(x)
  unique_langs = sorted(set(langs))
  cmap = plt.get_cmap("tab20" if len(unique_langs) > 10 else "tab10")
  fig, ax = plt.subplots(figsize=(7, 6))
  for li, lang in enumerate(unique_langs):
    for modality in sorted(set(modalities)):
      sel = (langs_arr == lang) & (modalities_arr == modality)
      if sel.any():
        ax.scatter(points[sel, 0], points[sel, 1], s=18, alpha=0.75, color=cmap(li % cmap.N),
                   marker=_MARKERS.get(modality, "x"), label=f"{lang} {modality}")
  ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
  ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
  ax.set_title(title)
  ax.legend(fontsize=7, ncol=2, loc="best", markerscale=1.2)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=100)
  plt.close(fig)
  return {"embedding_map_pc1_variance": float(ratio[0]), "embedding_map_pc2_variance": float(ratio[1])}


@base.register("embedding_map")
@gin.configurable
class EmbeddingMapEvaluator:
  """PCA map of pooled speech and text embeddings of the paired test split (PNG with an out_dir).

  Scalars: the centroid distance between modalities relative to the spread within them (how far
  apart speech and text sit), and the explained variance of the two components.
  """

  def __init__(self, corpus_dir: str | None = None, max_per_lang: int | None = 30, batch_size: int = 16):
    self.corpus_dir = corpus_dir
    self.max_per_lang, self.batch_size = max_per_lang, batch_size

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    corpus_dir = ctx.corpus(self.corpus_dir, type(self).__name__)
    step, out_dir = ctx.step, ctx.out_dir
    utts = [u for u in eval_data.read_utterances(corpus_dir, "paired", "test", max_per_lang=self.max_per_lang)
            if len(u.audio) and u.text.strip()]
    vocab = eval_data.load_vocabulary(corpus_dir)
    encoder = eval_data.Encoder(ctx.model, ctx.params, self.batch_size, cache=ctx.compiled)
    speech = encoder.speech([u.audio for u in utts])
    text = encoder.text(eval_data.tokenize(vocab, [u.text for u in utts]))
    spread = 0.5 * (speech.std(axis=0).mean() + text.std(axis=0).mean())
    gap = float(np.linalg.norm(speech.mean(axis=0) - text.mean(axis=0)) / max(spread, 1e-12))
    metrics = {"embedding_modality_gap": gap}
    if out_dir:
      langs = [u.lang for u in utts] * 2
      modalities = ["speech"] * len(utts) + ["text"] * len(utts)
      metrics.update(plot_embedding_map(os.path.join(out_dir, "embedding_map.png"), np.concatenate([speech, text]),
                                        langs, modalities, title=f"Pooled embeddings (PCA), step {step}"))
      plot_embedding_map(os.path.join(out_dir, "embedding_map_centered.png"), np.concatenate([speech, text]),
                         langs, modalities, title=f"Pooled embeddings, each modality centred (PCA), step {step}",
                         center_per_modality=True)
    return metrics
