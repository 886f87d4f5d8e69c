"""Language identification by a linear probe on frozen utterance features.

The probe is a linear classifier on standardized features, trained on the train split and scored on
the test split: it measures what the frozen encoder already separates, so it stays linear and
cheap. Two classifiers (`PROBES`): scikit-learn's multinomial logistic regression, and linear
discriminant analysis, the Gaussian back-end of x-vector language ID (one covariance shared by every
language). Speech defaults to LDA: its shared within-language covariance holds how clips of one
language differ (voices, rates, pitch), and its decision discounts those directions, where logistic
regression at C = 1 fits its training voices (the learning benchmark's 700-step checkpoints, test
voices never heard in training: 0.904 / 0.869 against 0.884 / 0.818 on seeds 0 / 1). Text keeps
logistic regression (its pooled vector: 0.686 against 0.644 with LDA).

Speech features (`SPEECH_FEATURES`) are, by default, the mean and standard deviation of each encoder
stage's frames (`speech_statistics`: x-vector statistics pooling over every stage, as SUPERB's probes
read every layer) and, where pre-training trained a CTC head (mSLAM-CTC), that head's phonotactics:
the clip's expected frequency of the corpus' 16 most frequent characters and of each pair of them
in consecutive frames (`mslam.ctc_phonotactics`; PRLM's phone n-grams, read from posteriors). On
the learning benchmark's 700-step checkpoints they took speech language ID from 0.868 to 0.926 on
the validation split and from 0.887 to 0.931 on the test split (both seeds' mean); the character
set, the single frame of lag and the 16 were chosen on the validation split. A model without a
CTC head gets the statistics alone; "pooled" is the top layer's pooled vector. Text features are
the pooled vector.
"""
import io
import json
import logging
import os
from typing import Sequence

import gin
import numpy as np
from etils import epath

from mslam_jax import storage
from mslam_jax.data import special_ids
from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import base


PROBES = ("logistic", "lda")


class LinearProbe:
  """Standardize + a linear classifier (PROBES); saved as plain arrays (npz) so a CLI can reload it."""

  def __init__(self, c: float = 1.0, max_iter: int = 2000, features: str = "pooled", classifier: str = "logistic",
               units: Sequence[int] | None = None):
    if classifier not in PROBES:
      raise ValueError(f"language-ID probe {classifier!r}: use one of {PROBES}")
    self.c, self.max_iter, self.features, self.classifier = c, max_iter, features, classifier
    self.units = None if units is None else [int(u) for u in units]  # PHONOTACTICS' vocabulary ids
    self.classes_: np.ndarray | None = None
    self.mean_ = self.scale_ = self.coef_ = self.intercept_ = None

  def fit(self, x: np.ndarray, labels: Sequence[str]) -> "LinearProbe":
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # pylint: disable=g-import-not-at-top
    from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
    from sklearn.preprocessing import StandardScaler  # pylint: disable=g-import-not-at-top
    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2:
      raise ValueError("a language-ID probe needs at least two languages in its training data")
    scaler = StandardScaler().fit(x)
    if self.classifier == "lda":  # its decision function is linear too: coef_ x + intercept_
      clf = LinearDiscriminantAnalysis(solver="svd").fit(scaler.transform(x), labels)
    else:
      clf = LogisticRegression(C=self.c, max_iter=self.max_iter).fit(scaler.transform(x), labels)
    self.classes_ = clf.classes_
    self.mean_, self.scale_ = scaler.mean_, scaler.scale_
    coef, intercept = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # scikit-learn stores a binary problem as one row
      coef, intercept = np.concatenate([-coef, coef]) / 2, np.concatenate([-intercept, intercept]) / 2
    self.coef_, self.intercept_ = coef, intercept
    return self

  def decision_function(self, x: np.ndarray) -> np.ndarray:
    z = (np.asarray(x, np.float64) - self.mean_) / self.scale_
    return z @ self.coef_.T + self.intercept_

  def predict(self, x: np.ndarray) -> np.ndarray:
    return self.classes_[self.decision_function(x).argmax(axis=-1)]

  def predict_proba(self, x: np.ndarray) -> np.ndarray:
    logits = self.decision_function(x)
    logits -= logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=-1, keepdims=True)

  def save(self, path: str) -> None:
    storage.makedirs(epath.Path(path).parent)
    with epath.Path(path).open("wb") as f:  # local or remote (gs://...)
      np.savez(f, classes=self.classes_.astype(str), features=np.asarray(self.features),
               classifier=np.asarray(self.classifier), mean=self.mean_,
               scale=self.scale_, coef=self.coef_, intercept=self.intercept_,
               **({} if self.units is None else {"units": np.asarray(self.units, np.int32)}))

  @classmethod
  def load(cls, path: str) -> "LinearProbe":
    with epath.Path(path).open("rb") as f:
      data = dict(np.load(io.BytesIO(f.read())))
    probe = cls(features=str(data["features"]) if "features" in data else "pooled",
                classifier=str(data["classifier"]) if "classifier" in data else "logistic",
                units=data["units"].tolist() if "units" in data else None)
    probe.classes_ = data["classes"]
    probe.mean_, probe.scale_ = data["mean"], data["scale"]
    probe.coef_, probe.intercept_ = data["coef"], data["intercept"]
    return probe


PHONOTACTICS = "statistics+phonotactics"
SPEECH_FEATURES = (PHONOTACTICS, "statistics", "pooled")


def model_speech_features(model, features: str) -> str:
  """The first of SPEECH_FEATURES, from `features` on, that `model` can give: PHONOTACTICS needs a
  pre-trained CTC head, "statistics" a model with `speech_statistics`."""
  if features not in SPEECH_FEATURES:
    raise ValueError(f"language-ID speech features {features!r}: use one of {SPEECH_FEATURES}")
  if features == PHONOTACTICS and not getattr(model, "has_ctc_head", False):
    features = "statistics"
  if features == "statistics" and not hasattr(model, "speech_statistics"):
    features = "pooled"
  return features


def phonotactic_units(corpus_dir: str, count: int = 16, max_per_lang: int = 200) -> list[int]:
  """The `count` most frequent vocabulary ids (reserved ids aside) in the corpus' text: the text
  stream's train split, else the paired transcripts', at most `max_per_lang` rows a language
  (empty for a corpus with neither)."""
  import collections  # pylint: disable=g-import-not-at-top
  vocab = eval_data.load_vocabulary(corpus_dir)
  counts = collections.Counter()
  for stream in ("text", "paired"):
    if eval_data.corpus_languages(corpus_dir, stream, "train"):
      for utt in eval_data.read_utterances(corpus_dir, stream, "train", max_per_lang=max_per_lang):
        counts.update(i for i in vocab.encode(utt.text) if i >= special_ids.NUM_RESERVED)
      break
  return [i for i, _ in counts.most_common(count)]


def speech_features(encoder: "eval_data.Encoder", audios: Sequence[np.ndarray], features: str,
                    units: Sequence[int] | None = None) -> np.ndarray:
  """The probe's speech features of `audios`: `model_speech_features(encoder.model, features)`'s
  (PHONOTACTICS reads the vocabulary ids `units`)."""
  features = model_speech_features(encoder.model, features)
  if features == PHONOTACTICS:
    if units is None:
      raise ValueError(f"{PHONOTACTICS} language-ID features need their units (phonotactic_units)")
    return encoder.speech_statistics(audios, units)
  if features == "statistics":
    return encoder.speech_statistics(audios)
  return encoder.speech(audios)


def probe_metrics(train_x: np.ndarray, train_labels: Sequence[str], test_x: np.ndarray,
                  test_labels: Sequence[str], modality: str, plot_path: str | None = None,
                  probe_path: str | None = None, features: str = "pooled",
                  classifier: str = "logistic", units: Sequence[int] | None = None) -> dict[str, float]:
  """Trains a probe; returns langid_{accuracy,macro_f1,...}_{modality}; optionally a confusion PNG."""
  from sklearn.metrics import accuracy_score, f1_score  # pylint: disable=g-import-not-at-top
  probe = LinearProbe(features=features, classifier=classifier, units=units).fit(train_x, train_labels)
  predicted = probe.predict(test_x)
  labels = sorted(set(train_labels) | set(test_labels))
  accuracy = float(accuracy_score(test_labels, predicted))
  metrics = {
      f"langid_accuracy_{modality}": accuracy,
      f"langid_macro_f1_{modality}": float(f1_score(test_labels, predicted, labels=labels, average="macro",
                                                    zero_division=0)),
      f"langid_num_test_{modality}": float(len(test_labels)),
      f"langid_chance_{modality}": float(1.0 / len(labels)),
  }
  if plot_path:
    plot_confusion(plot_path, test_labels, predicted, labels,
                   title=f"Language ID ({modality}, {classifier} probe on {features}): accuracy {accuracy:.3f}")
  if probe_path:
    probe.save(probe_path)
  logging.info("Language ID (%s): %s", modality, json.dumps({k: round(v, 4) for k, v in metrics.items()}))
  return metrics


def plot_confusion(path: str, true_labels: Sequence[str], predicted: Sequence[str], labels: Sequence[str],
                   title: str = "") -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import ConfusionMatrixDisplay, confusion_matrix  # pylint: disable=g-import-not-at-top
  cm = confusion_matrix(true_labels, predicted, labels=list(labels))
  size = max(4.0, 0.45 * len(labels) + 2)
  fig, ax = plt.subplots(figsize=(size, size))
  ConfusionMatrixDisplay(cm, display_labels=list(labels)).plot(ax=ax, colorbar=False, xticks_rotation=90)
  ax.set_title(title)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=100)
  plt.close(fig)


@base.register("langid")
@gin.configurable
class LangIDEvaluator:
  """Linear probes for speech (speech stream) and text (text stream): train split -> test split.

  With an `out_dir`, writes confusion matrices and the probes (`langid_probe_{modality}.npz`, what
  `mslam langid` loads). `speech_features`: one of SPEECH_FEATURES (the module docstring), the first
  the model can give from there on (`model_speech_features`); `num_phonotactic_units`: how many of
  the corpus' most frequent characters the phonotactics read. `speech_probe` / `text_probe`: the
  classifier of each modality's probe (PROBES; the module docstring says why speech uses LDA).
  """

  def __init__(self, corpus_dir: str | None = None, modalities: Sequence[str] = ("speech", "text"),
               max_train_per_lang: int | None = 60, max_test_per_lang: int | None = 30, batch_size: int = 16,
               speech_features: str = PHONOTACTICS, speech_probe: str = "lda", text_probe: str = "logistic",
               num_phonotactic_units: int = 16):
    for m in modalities:
      if m not in ("speech", "text"):
        raise ValueError(f"LangIDEvaluator.modalities holds {m!r}; use 'speech' and/or 'text'")
    if speech_features not in SPEECH_FEATURES:
      raise ValueError(f"LangIDEvaluator.speech_features is {speech_features!r}; use one of {SPEECH_FEATURES}")
    for name, value in (("speech_probe", speech_probe), ("text_probe", text_probe)):
      if value not in PROBES:
        raise ValueError(f"LangIDEvaluator.{name} is {value!r}; use one of {PROBES}")
    if num_phonotactic_units < 1:
      raise ValueError(f"LangIDEvaluator.num_phonotactic_units is {num_phonotactic_units}; use at least 1 "
                       f"(speech_features = 'statistics' leaves the phonotactics out)")
    self.speech_features, self.num_phonotactic_units = speech_features, num_phonotactic_units
    self.probes = {"speech": speech_probe, "text": text_probe}
    self.corpus_dir = corpus_dir
    self.modalities = tuple(modalities)
    self.max_train_per_lang, self.max_test_per_lang, self.batch_size = max_train_per_lang, max_test_per_lang, batch_size

  def speech_setup(self, model, corpus_dir: str | None = None) -> tuple[str, list[int] | None]:
    """The speech features `model` gives (model_speech_features) and, for PHONOTACTICS, their units
    (phonotactic_units of `corpus_dir`, default the evaluator's own); else None."""
    features = model_speech_features(model, self.speech_features)
    if features != PHONOTACTICS:
      return features, None
    units = phonotactic_units(corpus_dir or self.corpus_dir, self.num_phonotactic_units)
    if not units:
      logging.warning("Language ID: the corpus has no text to choose the phonotactic units from; the "
                      "speech probe reads the frame statistics alone")
      return "statistics", None
    return features, units

  def embed(self, encoder: "eval_data.Encoder", modality: str, split: str, max_per_lang: int | None,
            corpus_dir: str | None = None, units: Sequence[int] | None = None):
    """The probe's features and languages of a split (of `corpus_dir`, default the evaluator's own);
    speech reads `units` where its features are PHONOTACTICS (speech_setup)."""
    corpus_dir = corpus_dir or self.corpus_dir
    utts = eval_data.read_utterances(corpus_dir, modality, split, max_per_lang=max_per_lang)
    if modality == "speech":
      utts = [u for u in utts if len(u.audio)]
      return speech_features(encoder, [u.audio for u in utts], self.speech_features, units), [u.lang for u in utts]
    vocab = eval_data.load_vocabulary(corpus_dir)
    utts = [u for u in utts if u.text.strip()]
    return encoder.text(eval_data.tokenize(vocab, [u.text for u in utts])), [u.lang for u in utts]

  def evaluate(self, ctx: base.EvalContext) -> dict[str, float]:
    corpus_dir = ctx.corpus(self.corpus_dir, type(self).__name__)
    out_dir = ctx.out_dir
    encoder = eval_data.Encoder(ctx.model, ctx.params, self.batch_size, cache=ctx.compiled)
    metrics = {}
    for modality in self.modalities:
      features, units = self.speech_setup(ctx.model, corpus_dir) if modality == "speech" else ("pooled", None)
      train_x, train_y = self.embed(encoder, modality, "train", self.max_train_per_lang, corpus_dir, units)
      test_x, test_y = self.embed(encoder, modality, "test", self.max_test_per_lang, corpus_dir, units)
      metrics.update(probe_metrics(
          train_x, train_y, test_x, test_y, modality,
          plot_path=os.path.join(out_dir, f"langid_confusion_{modality}.png") if out_dir else None,
          probe_path=os.path.join(out_dir, f"langid_probe_{modality}.npz") if out_dir else None,
          features=features, classifier=self.probes[modality], units=units))
    return metrics
