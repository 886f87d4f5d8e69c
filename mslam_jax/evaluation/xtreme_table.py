"""An XTREME-S-style results table: task, metric, our figure, and the paper's fine-tuned mSLAM
figures (600M and 2B) for reference.

The built-in tasks are offline stand-ins (eSpeak speech of CLDR and number strings), so their
figures are not comparable with the paper's: the reference columns say what the same kind of
task reached on the real benchmark (mSLAM, arXiv 2202.01374, Table 1: mSLAM-CTC, with speech +
text fine-tuning for CoVoST 2).

  rows = xtreme_rows(metrics)                  # metrics: {"translation_bleu": 3.1, "ctc_cer": ...}
  markdown_table(rows), rows_as_dicts(rows)    # for report.md / report.json
"""
import dataclasses
import math
from typing import Mapping, Optional, Sequence


@dataclasses.dataclass(frozen=True)
class PaperFigure:
  benchmark: str
  metric: str
  mslam_600m: Optional[float]
  mslam_2b: Optional[float]


# mSLAM-CTC 0.6B and 2B, fine-tuned (the paper's headline table).
PAPER = {
    "covost2": PaperFigure("CoVoST 2 X->En (21 languages)", "BLEU", 22.4, 24.8),
    "voxpopuli": PaperFigure("VoxPopuli ASR", "WER", 9.2, 9.1),
    "mls": PaperFigure("MLS-10h ASR", "WER", 10.1, 9.7),
    "babel": PaperFigure("BABEL ASR", "WER", 32.9, 31.3),
    "minds14": PaperFigure("MINDS-14 intent", "accuracy (%)", 86.9, 86.6),
    "fleurs_langid": PaperFigure("FLEURS LangID (102 languages)", "accuracy (%)", 73.3, 77.7),
}


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One row: our task, the metric key(s) that give its figure, and the paper's benchmark."""
  task: str
  metric: str
  keys: tuple[str, ...]  # the first one present in the metrics is used
  paper: Optional[str] = None  # a key of PAPER
  scale: float = 1.0  # ours times scale (e.g. 100 for a share shown in %)
  baseline_key: Optional[str] = None


# The built-in tasks, in the table's order; a task whose metric is absent is left out.
BUILTIN_TASKS = (
    TaskSpec("built-in speech translation X->En", "BLEU", ("translation_bleu",), "covost2",
             baseline_key="translation_bleu_baseline"),
    TaskSpec("built-in speech translation X->En, held-out sources", "BLEU", ("translation_bleu_heldout",), "covost2",
             baseline_key="translation_bleu_heldout_baseline"),
    TaskSpec("built-in speech translation X->En", "chrF", ("translation_chrf",), None,
             baseline_key="translation_chrf_baseline"),
    TaskSpec("built-in ASR (CTC fine-tuned)", "CER (%)", ("ctc_cer",), None, 100.0),
    TaskSpec("built-in ASR (CTC fine-tuned)", "WER (%)", ("ctc_wer",), "voxpopuli", 100.0),
    TaskSpec("built-in ASR, held-out languages (zero-shot)", "CER (%)", ("zero_shot_cer",), None, 100.0),
    TaskSpec("built-in language ID (speech)", "accuracy (%)",
             ("langid_finetune_accuracy_speech", "langid_accuracy_speech"), "fleurs_langid", 100.0,
             baseline_key="langid_chance_speech"),
)


# The benchmark's own tasks, fine-tuned on prepared corpora (`mslam finetune --xtreme_s TASK`):
# these figures are comparable with the paper's columns (at the model's size and budget).
XTREME_S_TASKS = (
    TaskSpec("XTREME-S CoVoST 2 X->En", "BLEU", ("covost2_ast_bleu",), "covost2",
             baseline_key="covost2_ast_bleu_baseline"),
    TaskSpec("XTREME-S CoVoST 2 X->En", "chrF", ("covost2_ast_chrf",), None, baseline_key="covost2_ast_chrf_baseline"),
    TaskSpec("XTREME-S FLEURS ASR", "CER (%)", ("fleurs_asr_cer",), None, 100.0),
    TaskSpec("XTREME-S MLS ASR", "WER (%)", ("mls_asr_wer",), "mls", 100.0),
    TaskSpec("XTREME-S VoxPopuli ASR", "WER (%)", ("voxpopuli_asr_wer",), "voxpopuli", 100.0),
    TaskSpec("XTREME-S BABEL ASR", "WER (%)", ("babel_asr_wer",), "babel", 100.0),
    TaskSpec("XTREME-S MINDS-14 intent", "accuracy (%)", ("minds14_intent_accuracy",), "minds14", 100.0),
    TaskSpec("XTREME-S FLEURS LangID", "accuracy (%)", ("fleurs_langid_accuracy",), "fleurs_langid", 100.0),
)
ALL_TASKS = BUILTIN_TASKS + XTREME_S_TASKS


@dataclasses.dataclass(frozen=True)
class Row:
  task: str
  metric: str
  ours: float
  baseline: Optional[float]
  paper_benchmark: str
  paper_600m: Optional[float]
  paper_2b: Optional[float]


def xtreme_rows(metrics: Mapping[str, float], tasks: Sequence[TaskSpec] = ALL_TASKS) -> list[Row]:
  """The rows of `tasks` whose figure is in `metrics` (NaN figures are left out too)."""
  rows = []
  for spec in tasks:
    key = next((k for k in spec.keys if k in metrics and not math.isnan(float(metrics[k]))), None)
    if key is None:
      continue
    paper = PAPER.get(spec.paper) if spec.paper else None
    baseline = metrics.get(spec.baseline_key) if spec.baseline_key else None
    rows.append(Row(spec.task, spec.metric, float(metrics[key]) * spec.scale,
                    None if baseline is None else float(baseline) * spec.scale,
                    f"{paper.benchmark} ({paper.metric})" if paper else "", paper.mslam_600m if paper else None,
                    paper.mslam_2b if paper else None))
  return rows


def _fmt(value: Optional[float]) -> str:
  return "" if value is None else f"{value:.1f}"


def markdown_table(rows: Sequence[Row]) -> str:
  """The rows as a markdown table (empty string without rows)."""
  if not rows:
    return ""
  lines = ["| task | metric | ours | trivial baseline | paper benchmark | mSLAM 600M | mSLAM 2B |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r.task} | {r.metric} | {_fmt(r.ours)} | {_fmt(r.baseline)} | {r.paper_benchmark} | "
                 f"{_fmt(r.paper_600m)} | {_fmt(r.paper_2b)} |")
  return "\n".join(lines) + "\n"


def rows_as_dicts(rows: Sequence[Row]) -> list[dict]:
  """JSON-ready rows (for a report.json)."""
  return [dataclasses.asdict(r) for r in rows]
