"""Training curves from the trainer's JSON-lines metrics (MODEL_DIR/metrics.jsonl): PNGs and a summary.

  records = training_curves.read_metrics("/tmp/run/metrics.jsonl")
  training_curves.plot_training_curves(records, "/tmp/run/training_curves.png", title="mSLAM-CTC")
  training_curves.summarize(records)   # first/last/min of every loss term, for reports
"""
import json
import logging
import math
from typing import Mapping, Sequence

from etils import epath

from mslam_jax import storage

Records = dict[int, dict[str, float]]

TOTAL_LOSS = "loss"
# Health figures worth a panel of their own (those a run logs; others are ignored).
HEALTH_FIGURES = ("codebook/perplexity", "codebook/usage", "speech/contrastive_accuracy", "speech/mlm_accuracy",
                  "text/mlm_accuracy", "paired/tlm_text_accuracy", "paired/cross_modal_accuracy",
                  "paired/local_cross_modal_accuracy")
OPTIMIZER_FIGURES = ("learning_rate", "grad_norm")
# Collapse watch (near 1: frames or utterances have become one vector; every frame blank).
COLLAPSE_FIGURES = ("health/frame_cosine", "health/utterance_cosine", "health/ctc_blank_share")
OBJECTIVE_GRAD_PREFIX = "grad_norm/"  # train.health_every: each objective's gradient norm


def read_metrics(path: str) -> Records:
  """{step: metrics} from a metrics.jsonl; a resumed run rewrites steps and the later line wins.

  A line that does not parse (a run killed mid-write) is skipped, counted and logged.
  """
  records: Records = {}
  bad = 0
  with epath.Path(path).open() as f:  # local or remote (gs://...)
    for line in f:
      if not line.strip():
        continue
      try:
        record = json.loads(line)
        step = int(record.pop("step"))
      except (ValueError, KeyError, TypeError):
        bad += 1
        continue
      records.setdefault(step, {}).update({k: float(v) for k, v in record.items()
                                           if isinstance(v, (int, float))})
  if bad:
    logging.warning("%s: skipped %d unreadable line(s)", path, bad)
  return dict(sorted(records.items()))


def loss_terms(records: Records) -> list[str]:
  """The total loss first, then every `*_loss` term the run logged (sorted)."""
  names = set()
  for metrics in records.values():
    names.update(k for k in metrics if k.endswith("_loss") and not k.startswith("eval/"))
  return ([TOTAL_LOSS] if any(TOTAL_LOSS in m for m in records.values()) else []) + sorted(names)


def _series(records: Records, name: str) -> tuple[list[int], list[float]]:
  steps, values = [], []
  for step, metrics in records.items():
    value = metrics.get(name)
    if value is not None and math.isfinite(value):
      steps.append(step)
      values.append(value)
  return steps, values


def summarize(records: Records, names: Sequence[str] | None = None) -> dict:
  """Per loss term: first and last logged value (and their steps), minimum, and the mean of the
  last 10 % of points (a less noisy 'final' figure than one step)."""
  out = {"num_points": len(records), "first_step": min(records, default=None),
         "last_step": max(records, default=None), "terms": {}}
  for name in names if names is not None else loss_terms(records):
    steps, values = _series(records, name)
    if not values:
      continue
    tail = values[-max(1, len(values) // 10):]
    out["terms"][name] = {"first": values[0], "first_step": steps[0], "last": values[-1],
                          "last_step": steps[-1], "min": min(values), "mean_last_10pct": sum(tail) / len(tail)}
  return out


def plot_training_curves(records: Records, path: str, title: str = "training curves") -> str:
  """A 2x3 PNG: total loss; every loss term (log scale); health figures; learning rate and grad
  norm; the collapse watch; each objective's gradient norm on the watched layers."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  if not records:
    raise ValueError(f"no training metrics to plot for {path}")
  fig, axes = plt.subplots(2, 3, figsize=(19, 8.5))
  ax = axes[0, 0]
  ax.plot(*_series(records, TOTAL_LOSS), color="black", lw=1.5)
  ax.set_title("total (weighted) loss")
  ax = axes[0, 1]
  for name in loss_terms(records)[1:]:
    steps, values = _series(records, name)
    if values:
      ax.plot(steps, values, lw=1.2, label=name)
  ax.set_yscale("log")
  ax.set_title("loss terms (unweighted)")
  ax = axes[1, 0]
  for name in HEALTH_FIGURES:
    steps, values = _series(records, name)
    if not values:
      continue
    if name == "codebook/perplexity":  # entries, not a rate: scaled to a share of the codebook's peak
      peak = max(values) or 1.0
      ax.plot(steps, [v / peak for v in values], lw=1.2, label=f"{name} / {peak:.3g}")
    else:
      ax.plot(steps, values, lw=1.2, label=name)
  ax.set_title("health: accuracies, codebook use")
  ax = axes[1, 1]
  for name, color in zip(OPTIMIZER_FIGURES, ("tab:blue", "tab:red")):
    steps, values = _series(records, name)
    if not values:
      continue
    target = ax if name == "learning_rate" else ax.twinx()
    target.plot(steps, values, lw=1.2, color=color, label=name)
    target.set_ylabel(name, color=color)
  ax.set_title("optimizer")
  ax = axes[0, 2]
  for name in COLLAPSE_FIGURES:
    steps, values = _series(records, name)
    if values:
      ax.plot(steps, values, lw=1.2, label=name)
  ax.axhline(1.0, color="grey", lw=0.8, ls=":")
  ax.set_ylim(-0.05, 1.05)
  ax.set_title("collapse watch: cosine within / across utterances, CTC blanks")
  ax = axes[1, 2]
  names = sorted({k for m in records.values() for k in m if k.startswith(OBJECTIVE_GRAD_PREFIX)})
  for name in names:
    steps, values = _series(records, name)
    if any(v > 0 for v in values):
      ax.plot(steps, values, lw=1.2, marker=".", label=name[len(OBJECTIVE_GRAD_PREFIX):])
  if ax.lines:
    ax.set_yscale("log")
  ax.set_title("gradient norm of each objective (watched layers)")
  for a in axes.flat:
    a.set_xlabel("step")
    a.grid(alpha=0.3)
    if len(a.get_legend_handles_labels()[0]) > 1:
      a.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path


def plot_comparison(runs: Mapping[str, Records], names: Sequence[str], path: str,
                    title: str = "runs compared") -> str:
  """One panel per loss term, one line per run (e.g. joint pre-training vs its speech-only ablation)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.8), squeeze=False)
  for ax, name in zip(axes[0], names):
    for label, records in runs.items():
      steps, values = _series(records, name)
      if values:
        ax.plot(steps, values, lw=1.2, label=label)
    ax.set_title(name)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=7)
  fig.suptitle(title)
  fig.tight_layout()
  storage.save_figure(fig, path, dpi=90)
  plt.close(fig)
  return path
