"""Per-checkpoint JSON and markdown reports, and a sweep summary over all evaluated checkpoints.

metrics.json is what marks a checkpoint as evaluated: it is written whole or not at all (a temporary
file renamed into place), names the evaluators that ran and those that failed, and a report with a
failed evaluator, a missing evaluator or an unreadable file counts as not evaluated.
"""
import json
import logging
import math
import os
import tempfile
from typing import Mapping, Sequence

from etils import epath

from mslam_jax import storage
from mslam_jax.evaluation import base
from mslam_jax.evaluation import xtreme_table

# The figures every report leads with (and that `mslam demo` copies into its report.json).
HEADLINE_METRICS = (
    "retrieval_r1_speech_to_text",
    "retrieval_r1_text_to_speech",
    "retrieval_r5_speech_to_text",
    "retrieval_r5_text_to_speech",
    "retrieval_mrr_speech_to_text",
    "retrieval_mrr_text_to_speech",
    "langid_accuracy_speech",
    "langid_accuracy_text",
    "langid_macro_f1_speech",
    "langid_macro_f1_text",
    "ctc_cer",
    "ctc_wer",
    "ctc_cer_beam",
    "ctc_cer_lm",
    "zero_shot_cer",
    "zero_shot_cer_speech_only_ablation",
    "zero_shot_cer_lm",
    "zero_shot_cer_lm_speech_only_ablation",
    "zero_shot_seen_cer",
    "zero_shot_seen_cer_speech_only_ablation",
    "alignment_word_boundary_error_ms",
)
METRICS_FILE = "metrics.json"
REPORT_FILE = "report.md"


def headline(metrics: Mapping[str, float]) -> dict[str, float]:
  """The headline subset, in HEADLINE_METRICS order (missing ones left out)."""
  return {k: float(metrics[k]) for k in HEADLINE_METRICS if k in metrics}


def _fmt(value: float) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "n/a"
  return f"{value:.4g}"


def _table(rows: list[tuple[str, str]], header: tuple[str, str] = ("metric", "value")) -> list[str]:
  lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
  lines += [f"| {a} | {b} |" for a, b in rows]
  return lines


def _xtreme_lines(metrics: Mapping[str, float], title: str = "## XTREME-S-style table") -> list[str]:
  """The downstream tasks this report has figures for, next to the paper's (nothing without any)."""
  table = xtreme_table.markdown_table(xtreme_table.xtreme_rows(metrics))
  if not table:
    return []
  return ["", title, "", "Rows named built-in are offline stand-ins of the benchmarks: there the paper's columns "
          "say what mSLAM reached on the real benchmark, not a figure to compare with.", "", table.rstrip("\n")]


def _write_atomically(path: str, text: str) -> None:
  """Readers see the old file or the new one, never half of one (rename is atomic on POSIX; an
  object store replaces an object whole)."""
  if storage.is_remote(path):
    storage.write_text(path, text)
    return
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_checkpoint_report(out_dir: str, step: int, metrics: Mapping[str, float], source: str = "",
                            evaluators: Sequence[str] | None = None, failed: Sequence[str] = ()) -> str:
  """Writes out_dir/metrics.json and out_dir/report.md (figures, per-language tables, plots).

  `evaluators`: the names that ran (a later sweep asking for others evaluates again); `failed`: those
  that raised (the checkpoint then counts as not evaluated).
  """
  storage.makedirs(out_dir)
  record = {"step": int(step), "source": source, "metrics": {k: float(v) for k, v in sorted(metrics.items())}}
  if evaluators is not None:
    record["evaluators"] = sorted(evaluators)
  record["failed_evaluators"] = sorted(failed)
  _write_atomically(os.path.join(out_dir, METRICS_FILE), json.dumps(record, indent=1, allow_nan=True))
  lines = [f"# Evaluation at step {step}", ""]
  if source:
    lines += [f"Checkpoint: `{source}`", ""]
  lines += ["## Headline figures", ""]
  lines += _table([(k, _fmt(v)) for k, v in headline(metrics).items()])
  lines += _xtreme_lines(metrics)
  per_lang = sorted(k for k in metrics if "/" in k)
  if per_lang:
    lines += ["", "## Per language", ""]
    lines += _table([(k, _fmt(metrics[k])) for k in per_lang])
  other = sorted(k for k in metrics if "/" not in k and k not in HEADLINE_METRICS)
  if other:
    lines += ["", "## Other figures", ""]
    lines += _table([(k, _fmt(metrics[k])) for k in other])
  pictures = sorted(p.name for p in epath.Path(out_dir).glob("*.png"))
  if pictures:
    lines += ["", "## Plots", ""]
    lines += [f"![{os.path.splitext(p)[0]}]({p})" for p in pictures]
  if failed:
    lines = lines[:2] + [f"**Not final**: evaluator(s) {', '.join(sorted(failed))} failed; the next sweep "
                         "evaluates this checkpoint again.", ""] + lines[2:]
  path = os.path.join(out_dir, REPORT_FILE)
  _write_atomically(path, "\n".join(lines) + "\n")
  return path


def read_checkpoint_metrics(out_dir: str, evaluators: Sequence[str] | None = None) -> dict[str, float] | None:
  """The figures of a finished evaluation of this checkpoint, or None when it must be evaluated
  (again): no metrics.json, an unreadable one (warned), one with failed evaluators, or one that
  lacks some of `evaluators`."""
  path = epath.Path(out_dir) / METRICS_FILE
  if not path.exists():
    return None
  try:
    record = json.loads(path.read_text())
    metrics = {str(k): float(v) for k, v in record["metrics"].items()}
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    logging.warning("%s is unreadable (%s: %s); evaluating this checkpoint again", path, type(e).__name__, e)
    return None
  failed = record.get("failed_evaluators") or []
  if failed or metrics.get(base.FAILED_KEY, 0):
    logging.info("%s: evaluator(s) %s failed last time; evaluating again", out_dir, failed or "?")
    return None
  done = record.get("evaluators")
  if evaluators is not None and done is not None and set(evaluators) - set(done):
    logging.info("%s lacks evaluator(s) %s; evaluating again", out_dir, sorted(set(evaluators) - set(done)))
    return None
  return metrics


def write_sweep_report(output_dir: str, results: Mapping[int, Mapping[str, float]]) -> str:
  """output_dir/report.md: headline figures per checkpoint, and a PNG of them against the step."""
  steps = sorted(results)
  names = [k for k in HEADLINE_METRICS if any(k in results[s] for s in steps)]
  lines = ["# Evaluation sweep", "", "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for s in steps:
    lines.append(f"| [{s}](step_{s}/{REPORT_FILE}) | " + " | ".join(_fmt(results[s].get(k)) for k in names) + " |")
  if steps:
    lines += _xtreme_lines(results[steps[-1]], f"## XTREME-S-style table (step {steps[-1]})")
  if len(steps) > 1 and names:
    import matplotlib  # pylint: disable=g-import-not-at-top
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k in names:
      ax = axes[1] if k.endswith("_ms") else axes[0]
      ax.plot(steps, [results[s].get(k, float("nan")) for s in steps], marker="o", label=k)
    axes[0].set_title("rates and accuracies")
    axes[1].set_title("word-boundary error (ms)")
    for ax in axes:
      ax.set_xlabel("pre-training step")
      if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    storage.save_figure(fig, os.path.join(output_dir, "sweep.png"), dpi=100)
    plt.close(fig)
    lines += ["", "![sweep](sweep.png)"]
  path = os.path.join(output_dir, REPORT_FILE)
  storage.makedirs(output_dir)
  _write_atomically(path, "\n".join(lines) + "\n")
  return path
