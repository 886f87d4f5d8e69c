"""Per-checkpoint JSON and markdown reports, and a sweep summary over all evaluated checkpoints."""
import glob
import json
import math
import os
from typing import Mapping

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
    "zero_shot_cer",
    "zero_shot_cer_speech_only_ablation",
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


def write_checkpoint_report(out_dir: str, step: int, metrics: Mapping[str, float], source: str = "") -> str:
  """Writes out_dir/metrics.json and out_dir/report.md (figures, per-language tables, plots)."""
  os.makedirs(out_dir, exist_ok=True)
  with open(os.path.join(out_dir, METRICS_FILE), "w") as f:
    json.dump({"step": int(step), "source": source, "metrics": {k: float(v) for k, v in sorted(metrics.items())}},
              f, indent=1, allow_nan=True)
  lines = [f"# Evaluation at step {step}", ""]
  if source:
    lines += [f"Checkpoint: `{source}`", ""]
  lines += ["## Headline figures", ""]
  lines += _table([(k, _fmt(v)) for k, v in headline(metrics).items()])
  per_lang = sorted(k for k in metrics if "/" in k)
  if per_lang:
    lines += ["", "## Per language", ""]
    lines += _table([(k, _fmt(metrics[k])) for k in per_lang])
  other = sorted(k for k in metrics if "/" not in k and k not in HEADLINE_METRICS)
  if other:
    lines += ["", "## Other figures", ""]
    lines += _table([(k, _fmt(metrics[k])) for k in other])
  pictures = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out_dir, "*.png")))
  if pictures:
    lines += ["", "## Plots", ""]
    lines += [f"![{os.path.splitext(p)[0]}]({p})" for p in pictures]
  path = os.path.join(out_dir, REPORT_FILE)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path


def read_checkpoint_metrics(out_dir: str) -> dict[str, float] | None:
  path = os.path.join(out_dir, METRICS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)["metrics"]


def write_sweep_report(output_dir: str, results: Mapping[int, Mapping[str, float]]) -> str:
  """output_dir/report.md: headline figures per checkpoint, and a PNG of them against the step."""
  steps = sorted(results)
  names = [k for k in HEADLINE_METRICS if any(k in results[s] for s in steps)]
  lines = ["# Evaluation sweep", "", "| step | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
  for s in steps:
    lines.append(f"| [{s}](step_{s}/{REPORT_FILE}) | " + " | ".join(_fmt(results[s].get(k)) for k in names) + " |")
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
    fig.savefig(os.path.join(output_dir, "sweep.png"), dpi=100)
    plt.close(fig)
    lines += ["", "![sweep](sweep.png)"]
  path = os.path.join(output_dir, REPORT_FILE)
  os.makedirs(output_dir, exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")
  return path
