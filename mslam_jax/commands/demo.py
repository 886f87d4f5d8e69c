"""`mslam demo`: the whole system at toy scale on a CPU (13 to 17 minutes on 2 idle cores, by the day).

  mslam demo [--out ./mslam_demo] [--steps 420] [--finetune-steps 800] [--translation-steps N]
      [--no-ablation] [--no-translation] [--corpus-only] [--gin.NAME=VALUE ...]

1. builds the built-in corpus (10 languages, 2 held out for zero-shot ASR) into OUT/corpus;
2. pre-trains the tiny model with mSLAM-CTC + the cross-modal loss into OUT/pretrain;
3. pre-trains the speech-only ablation (no text nor paired objectives) at the same step budget
   into OUT/pretrain_speech_only;
4. runs the evaluation sweep (retrieval, language ID by probe, CTC fine-tuning,
   zero-shot ASR, alignment, embedding map) into OUT/eval, and the zero-shot evaluation of the
   ablation under its own config;
5. fine-tunes speech translation X -> En (the corpus' built-in translation data, a small decoder)
   from the pre-trained checkpoint into OUT/translation and scores it with sacrebleu BLEU and chrF
   against always answering the most frequent English target, held-out source languages apart;
   the ablation's evaluation and this stage run in a second process beside the sweep (log:
   OUT/side_stages.log), which saves about 1.5 minutes on 2 cores;
6. prints the results table and writes OUT/report.json, OUT/report.md (with the XTREME-S-style
   table) and the PNGs.

Sizes live in gin_configs/runs/demo.gin. Re-running on the same OUT skips what is done: the corpus
is rebuilt only when its config changed, training resumes from the last checkpoint (or is skipped
when it reached its steps), evaluated checkpoints are read back, and compiled programs come from
OUT/jax_cache ($MSLAM_JAX_CACHE instead, where set: one cache for several demo directories; "off" or
empty: no cache).
"""
import argparse
import json
import logging
import math
import os
import resource
import subprocess
import sys
import time
from typing import Any, Sequence

import gin

from mslam_jax import compilation_cache
from mslam_jax import config
from mslam_jax.commands import common

DEFAULT_OUT = "./mslam_demo"
TRANSLATION_GIN = "runs/finetune_translate.gin"
TRANSLATION_SCOPE = "translate"  # runs/demo.gin's FinetuneConfig of the translation fine-tuning
TRANSLATION_PREFIX = "translation_"
ABLATION_FIGURE = "zero_shot_cer_speech_only_ablation"
REPORT_MD = "report.md"
RUN_GIN_FILES = ("models/tiny.gin", "experiments/mslam_ctc_xmodal.gin", "runs/pretrain.gin", "runs/demo.gin")
REPORT_FILE = "report.json"
SIDE_SPEC, SIDE_RESULT, SIDE_LOG = "side_stages_spec.json", "side_stages.json", "side_stages.log"
# The figures every demo report holds (null when an evaluator could not produce one), in table order.
REQUIRED_METRICS = (
    "retrieval_r1_speech_to_text",
    "retrieval_r1_text_to_speech",
    "langid_accuracy_speech",
    "langid_accuracy_text",
    "ctc_cer",
    "zero_shot_cer",
    ABLATION_FIGURE,
    "alignment_word_boundary_error_ms",
    "translation_bleu",
    "translation_bleu_baseline",
    "translation_bleu_heldout",
    "translation_bleu_heldout_baseline",
    "translation_chrf",
    "translation_chrf_baseline",
)
TABLE_ROWS = (
    # (metric, label, reference figure shown next to it)
    ("retrieval_r1_speech_to_text", "retrieval R@1 speech->text", "retrieval_chance_r1"),
    ("retrieval_r1_text_to_speech", "retrieval R@1 text->speech", "retrieval_chance_r1"),
    ("retrieval_r5_speech_to_text", "retrieval R@5 speech->text", None),
    ("retrieval_mrr_speech_to_text", "retrieval MRR speech->text", None),
    # Among candidates whose clips last about as long as the query's: what R@1 owes to content, not duration.
    ("retrieval_r1_speech_to_text_similar_duration", "retrieval R@1 speech->text, clips within {window:g} s",
     "retrieval_chance_r1_similar_duration"),
    # The same pool, queries of the training languages / of the held-out ones (no pairs pre-trained).
    ("retrieval_r1_speech_to_text_seen", "retrieval R@1 speech->text, training languages", "retrieval_chance_r1"),
    ("retrieval_r1_speech_to_text_heldout", "retrieval R@1 speech->text, held-out languages", "retrieval_chance_r1"),
    # Two stages: the embedding's top 50 reordered by the pre-trained CTC head (RetrievalEvaluator).
    ("retrieval_r1_speech_to_text_ctc_rerank", "retrieval R@1 speech->text, top 50 reranked by CTC",
     "retrieval_chance_r1"),
    ("retrieval_r1_text_to_speech_ctc_rerank", "retrieval R@1 text->speech, top 50 reranked by CTC",
     "retrieval_chance_r1"),
    ("langid_accuracy_speech", "language ID accuracy, speech", "langid_chance_speech"),
    ("langid_accuracy_text", "language ID accuracy, text", "langid_chance_text"),
    ("ctc_cer", "CTC CER, training languages", None),
    ("ctc_wer", "CTC WER, training languages", None),
    ("zero_shot_cer", "zero-shot CER, held-out languages", None),
    (ABLATION_FIGURE, "zero-shot CER, speech-only ablation", None),
    # Beam search fused with a character 6-gram LM of the train text (finetune_job.ctc_language_models).
    ("ctc_cer_lm", "CTC CER, training languages, with a character LM", None),
    ("zero_shot_cer_lm", "zero-shot CER, with a character LM", None),
    ("zero_shot_cer_lm_speech_only_ablation", "zero-shot CER, speech-only ablation, with a character LM", None),
    # With self-training on (runs/eval_self_training.gin): the head trained on on its own transcripts
    # of the held-out languages' untranscribed speech (finetune_job.self_training_metrics).
    ("zero_shot_self_trained_cer", "zero-shot CER after self-training", None),
    ("zero_shot_self_trained_cer_speech_only_ablation", "zero-shot CER after self-training, speech-only ablation",
     None),
    ("ctc_self_trained_cer", "CTC CER after self-training on every language's speech", None),
    ("alignment_word_boundary_error_ms", "word-boundary error (ms; offsets fitted on train)",
     "alignment_word_boundary_error_ms_uniform_baseline"),
    ("alignment_word_boundary_error_ms_uncalibrated", "word-boundary error (ms), uncalibrated", None),
    ("translation_bleu", "speech translation BLEU, training sources", "translation_bleu_baseline"),
    ("translation_bleu_heldout", "speech translation BLEU, held-out sources", "translation_bleu_heldout_baseline"),
    ("translation_chrf", "speech translation chrF, training sources", "translation_chrf_baseline"),
    ("translation_chrf_heldout", "speech translation chrF, held-out sources", "translation_chrf_heldout_baseline"),
)
REFERENCE_NAMES = {"retrieval_chance_r1": "chance", "retrieval_chance_r1_similar_duration": "chance", "langid_chance_speech": "chance", "langid_chance_text": "chance",
                   "alignment_word_boundary_error_ms_uniform_baseline": "uniform",
                   **{f"translation_{m}{g}_baseline": "most frequent target" for m in ("bleu", "chrf")
                      for g in ("", "_heldout")}}
COMPARED_TERMS = ("speech/contrastive_loss", "speech/mlm_loss", "codebook/perplexity")


class Stage:
  """Times one stage of the demo: wall seconds and CPU seconds of this process and its children
  (on a busy machine the CPU time says what an idle one would take)."""

  def __init__(self, timings: dict, name: str, description: str):
    self._timings, self._name, self._description = timings, name, description

  def __enter__(self):
    print(f"\n== {self._description}", flush=True)
    self._wall, self._cpu = time.time(), _cpu_seconds()
    self.skipped = False
    return self

  def __exit__(self, *exc):
    wall, cpu = time.time() - self._wall, _cpu_seconds() - self._cpu
    self._timings[self._name] = {"wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "skipped": self.skipped}
    print(f"   {self._name}: {wall:.0f} s wall, {cpu:.0f} s CPU{' (already done)' if self.skipped else ''}",
          flush=True)
    return False


def _cpu_seconds() -> float:
  children = resource.getrusage(resource.RUSAGE_CHILDREN)
  return time.process_time() + children.ru_utime + children.ru_stime


def _parse(gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str]) -> None:
  gin.clear_config()
  config.parse_gin(list(gin_files), list(bindings), search_paths)


def _macro(name: str) -> Any:
  return gin.query_parameter(f"%{name}")


# -- stages ------------------------------------------------------------------------------------

def build_corpus(corpus_dir: str) -> dict:
  """The built-in corpus per runs/demo.gin (build_builtin_corpus.*); a no-op when up to date."""
  from mslam_jax.data import builtin_corpus  # pylint: disable=g-import-not-at-top
  return builtin_corpus.build_builtin_corpus(corpus_dir, progress=True)


def pretrain(model_dir: str) -> tuple[dict, bool]:
  """Runs the parsed pre-training config; (summary, skipped) where skipped means the run had
  already reached its steps. An interrupted run resumes from its latest checkpoint by itself."""
  from mslam_jax import checkpoints  # pylint: disable=g-import-not-at-top
  from mslam_jax import train as train_lib  # pylint: disable=g-import-not-at-top
  config.check_required_macros()
  train_steps = int(_macro("TRAIN_STEPS"))
  done = checkpoints.checkpoint_steps(model_dir)
  if done and done[-1] >= train_steps:
    logging.info("%s already has a checkpoint at step %d (>= %d steps): not training", model_dir, done[-1],
                 train_steps)
    return {"final_step": done[-1], "stopped": "already done"}, True
  return train_lib.train(), False


def finetune_translation(model_dir: str, corpus_dir: str, translation_dir: str, gin_files: Sequence[str],
                         bindings: Sequence[str], search_paths: Sequence[str]) -> tuple[dict[str, float], bool]:
  """Speech translation X -> En (the corpus' built-in translation data, built here if missing)
  fine-tuned from the pre-training run's latest checkpoint into `translation_dir` by the fine-tuning
  job (runs/finetune_translate.gin, then `gin_files`: runs/demo.gin sizes it under the
  `translate/` scope); returns (the final checkpoint's test figures, skipped) where skipped means
  the fine-tuning and its evaluation were already done."""
  from mslam_jax.data import translation as translation_data  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import finetune  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import finetune_job  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import report as report_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import translation  # pylint: disable=g-import-not-at-top
  config.parse_run_config(model_dir, [TRANSLATION_GIN] + list(gin_files),
                          [f"INIT_FROM = '{model_dir}'", f"MODEL_DIR = '{translation_dir}'",
                           f"CORPUS_DIR = '{corpus_dir}'"] + list(bindings), search_paths)
  config.check_required_macros()
  translation_data.build_translation_data(corpus_dir, progress=True)
  with gin.config_scope(TRANSLATION_SCOPE):
    settings = finetune.FinetuneConfig()
  final_dir = os.path.join(translation_dir, "eval", f"step_{settings.steps}")
  done = report_lib.read_checkpoint_metrics(final_dir, [translation.TranslationEvaluator.name])
  if done is not None:
    return done, True
  # The job scores its final checkpoint (BLEU, chrF, baselines) on the test split.
  metrics = finetune_job.finetune_run(settings=settings, progress_bar=True, tensorboard=False)
  return {k: v for k, v in metrics.items() if k != "final_step"}, False


def bleu_over_steps(translation_dir: str, out_png: str) -> str | None:
  """The BLEU curve of the translation fine-tuning (its periodic evaluations), or None without two
  evaluated steps."""
  from mslam_jax.evaluation import report as report_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import translation  # pylint: disable=g-import-not-at-top
  points, baseline = {"test, training source languages": [], "test, held-out source languages": []}, None
  eval_dir = os.path.join(translation_dir, "eval")
  for name in sorted(os.listdir(eval_dir)) if os.path.isdir(eval_dir) else ():
    metrics = report_lib.read_checkpoint_metrics(os.path.join(eval_dir, name))
    if not name.startswith("step_") or metrics is None:
      continue
    for label, key in zip(points, ("translation_bleu", "translation_bleu_heldout")):
      if _finite_or_none(metrics.get(key)) is not None:
        points[label].append((int(name[len("step_"):]), metrics[key]))
    baseline = metrics.get("translation_bleu_baseline", baseline)
  points = {k: v for k, v in points.items() if v}
  if max((len(v) for v in points.values()), default=0) < 2:
    return None
  return translation.plot_bleu_over_steps(out_png, points, baseline=_finite_or_none(baseline),
                                          title="speech translation X->En: BLEU over fine-tuning steps")


def _finite_or_none(value: Any) -> float | None:
  try:
    value = float(value)
  except (TypeError, ValueError):
    return None
  return value if math.isfinite(value) else None


def results_table(metrics: dict[str, float]) -> str:
  """The demo's results as a plain-text table (metric, value, reference figure)."""
  from mslam_jax.evaluation import retrieval  # pylint: disable=g-import-not-at-top
  rows = [("figure", "value", "reference")]
  for key, label, reference in TABLE_ROWS:
    label = label.format(window=retrieval.DURATION_WINDOW_S)
    if key not in metrics and key not in REQUIRED_METRICS:
      continue
    value = _finite_or_none(metrics.get(key))
    ref = _finite_or_none(metrics.get(reference)) if reference else None
    # Translation figures carry a paired bootstrap against their baseline (evaluation/translation.py).
    ci, p_value = _finite_or_none(metrics.get(f"{key}_ci95")), _finite_or_none(metrics.get(f"{key}_p_value"))
    shown = "n/a" if value is None else f"{value:.4g}" + ("" if ci is None else f" ± {ci:.2g}")
    against = "" if ref is None else f"{REFERENCE_NAMES[reference]} {ref:.4g}" + (
        "" if p_value is None else f" (paired bootstrap p {p_value:.2g})")
    rows.append((label, shown, against))
  widths = [max(len(r[i]) for r in rows) for i in range(3)]
  lines = [" | ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
  lines.insert(1, "-+-".join("-" * w for w in widths))
  return "\n".join(lines)


def _curves(model_dir: str, out_png: str, title: str) -> tuple[dict, Any]:
  from mslam_jax import training_curves  # pylint: disable=g-import-not-at-top
  records = training_curves.read_metrics(os.path.join(model_dir, "metrics.jsonl"))
  training_curves.plot_training_curves(records, out_png, title=title)
  return training_curves.summarize(records), records


# -- the second process ---------------------------------------------------------------------------
# The speech-only ablation's zero-shot evaluation and the translation fine-tuning need only the
# pre-trained checkpoints, and like the sweep they spend much of their time where one process leaves
# a core idle (XLA compiles, fine-tuning batches of 8 clips): they run in a second process beside
# the sweep. Each leaves its results where this process's own stages read them back, so a failed
# second process only costs time: the stages then do the work here.

def _start_side_stages(out: str, spec: dict) -> subprocess.Popen:
  with open(os.path.join(out, SIDE_SPEC), "w", encoding="utf-8") as f:
    json.dump(spec, f)
  if os.path.exists(os.path.join(out, SIDE_RESULT)):
    os.remove(os.path.join(out, SIDE_RESULT))
  with open(os.path.join(out, SIDE_LOG), "w", encoding="utf-8") as log:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from mslam_jax.commands import demo; sys.exit(demo.side_stages(sys.argv[1]))",
         out], stdout=log, stderr=subprocess.STDOUT)


def _finish_side_stages(out: str, proc: subprocess.Popen) -> dict:
  """Waits for the second process; its stages' timings ({} when it failed: this process then does its work)."""
  if proc.wait() == 0 and os.path.exists(os.path.join(out, SIDE_RESULT)):
    with open(os.path.join(out, SIDE_RESULT), encoding="utf-8") as f:
      return json.load(f)
  logging.warning("The ablation's evaluation / translation beside the sweep failed (exit %s; see %s): running "
                  "what is left of them here", proc.returncode, os.path.join(out, SIDE_LOG))
  return {}


def side_stages(out: str) -> int:
  """The second process: OUT/side_stages_spec.json's stages; their timings go to OUT/side_stages.json."""
  common.setup_logging()
  with open(os.path.join(out, SIDE_SPEC), encoding="utf-8") as f:
    spec = json.load(f)
  timings: dict[str, dict] = {}
  try:
    if spec["ablation_dir"]:
      from mslam_jax.evaluation import sweep  # pylint: disable=g-import-not-at-top
      with Stage(timings, "ablation_eval", "speech-only ablation: zero-shot evaluation"):
        sweep.ablation_figures(spec["model_dir"], spec["ablation_dir"], corpus_dir=spec["corpus_dir"],
                               bindings=spec["eval_bindings"], search_paths=spec["search"],
                               output_dir=spec["eval_dir"])
    if spec["translation_dir"]:
      with Stage(timings, "translation", "speech translation X->En fine-tuning") as stage:
        _, stage.skipped = finetune_translation(spec["model_dir"], spec["corpus_dir"], spec["translation_dir"],
                                                spec["gin_files"], spec["user"], spec["search"])
  finally:
    gin.clear_config()
  with open(os.path.join(out, SIDE_RESULT), "w", encoding="utf-8") as f:
    json.dump(timings, f)
  return 0


# -- the command -------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--out", default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})")
  parser.add_argument("--steps", type=int, default=None,
                      help="pre-training steps of each run (default: TRAIN_STEPS in runs/demo.gin)")
  parser.add_argument("--finetune-steps", type=int, default=None,
                      help="CTC fine-tuning steps of the evaluation (default: FinetuneConfig.steps in runs/demo.gin)")
  parser.add_argument("--translation-steps", type=int, default=None,
                      help="speech translation fine-tuning steps (default: translate/FinetuneConfig.steps in "
                           "runs/demo.gin)")
  parser.add_argument("--languages", default=None,
                      help="comma-separated ISO 639-3 codes of the corpus (default: runs/demo.gin)")
  parser.add_argument("--held-out", default=None, help="comma-separated held-out (zero-shot) languages")
  parser.add_argument("--per-language", type=int, default=None,
                      help="utterances per language in the speech stream (paired and text: twice as many, "
                           "as in runs/demo.gin)")
  parser.add_argument("--no-ablation", action="store_true",
                      help="skip the speech-only ablation (its zero-shot figure is then null)")
  parser.add_argument("--no-translation", action="store_true",
                      help="skip the speech translation fine-tuning (its figures are then null)")
  parser.add_argument("--one-process", action="store_true",
                      help="run the ablation's evaluation and the translation in this process after the sweep, "
                           "not in a second one beside it: for runs that already share the cores with another "
                           "job (the learning benchmark's seeds), where a second process only adds contention")
  parser.add_argument("--corpus-only", action="store_true",
                      help="build (or check) OUT/corpus and stop: several demo runs can then share it")
  config.add_gin_arguments(parser)


def _flag_bindings(args: argparse.Namespace) -> list[str]:
  """The convenience flags as gin bindings (they come before --gin flags, which win)."""
  out = []
  if args.steps is not None:
    out.append(f"TRAIN_STEPS = {int(args.steps)}")
  if args.finetune_steps is not None:
    out.append(f"FinetuneConfig.steps = {int(args.finetune_steps)}")
  if args.translation_steps is not None:
    out.append(f"{TRANSLATION_SCOPE}/FinetuneConfig.steps = {int(args.translation_steps)}")
  if args.languages:
    out.append(f"build_builtin_corpus.languages_ = {[c.strip() for c in args.languages.split(',') if c.strip()]!r}")
  if args.held_out is not None:
    out.append(f"build_builtin_corpus.held_out = {[c.strip() for c in args.held_out.split(',') if c.strip()]!r}")
  if args.per_language is not None:
    out.append(f"build_builtin_corpus.per_language = {int(args.per_language)}")
    out.append(f"build_builtin_corpus.paired_per_language = {2 * int(args.per_language)}")
    out.append(f"build_builtin_corpus.text_per_language = {2 * int(args.per_language)}")
  return out


def run(args: argparse.Namespace) -> int:
  common.setup_logging()
  start_wall, start_cpu = time.time(), _cpu_seconds()
  out = os.path.abspath(args.out)
  corpus_dir = os.path.join(out, "corpus")
  model_dir = os.path.join(out, "pretrain")
  ablation_dir = os.path.join(out, "pretrain_speech_only")
  translation_dir = os.path.join(out, "translation")
  os.makedirs(out, exist_ok=True)
  compilation_cache.enable(default=os.path.join(out, "jax_cache"))

  gin_files = list(RUN_GIN_FILES) + list(args.gin_file)
  user = _flag_bindings(args) + list(getattr(args, "gin_bindings", []))
  search = args.gin_search_path
  timings: dict[str, dict] = {}
  try:
    with Stage(timings, "corpus", f"1/6 built-in corpus -> {corpus_dir}") as stage:
      _parse(gin_files, [f"CORPUS_DIR = '{corpus_dir}'", f"MODEL_DIR = '{model_dir}'"] + user, search)
      before = dict(time=os.path.getmtime(os.path.join(corpus_dir, "manifest.json"))
                    if os.path.exists(os.path.join(corpus_dir, "manifest.json")) else None)
      manifest = build_corpus(corpus_dir)
      stage.skipped = before["time"] is not None and before["time"] == os.path.getmtime(
          os.path.join(corpus_dir, "manifest.json"))
    if args.corpus_only:
      print(f"\nmslam demo: the corpus is in {corpus_dir}", flush=True)
      return 0
    runs = [("pretrain", model_dir, (), "2/6 pre-training: mSLAM-CTC + cross-modal")]
    if not args.no_ablation:
      from mslam_jax.evaluation import zero_shot  # pylint: disable=g-import-not-at-top
      runs.append(("pretrain_speech_only", ablation_dir, zero_shot.SPEECH_ONLY_BINDINGS,
                   "3/6 pre-training: speech-only ablation (same steps, no text nor paired objectives)"))
    summaries = {}
    for name, directory, extra, description in runs:
      with Stage(timings, name, f"{description} -> {directory}") as stage:
        # The ablation's bindings come last: a --gin flag (a weight, a batch size) must not undo them.
        _parse(gin_files, [f"CORPUS_DIR = '{corpus_dir}'", f"MODEL_DIR = '{directory}'"] + user + list(extra),
               search)
        train_steps = int(_macro("TRAIN_STEPS"))
        summaries[name], stage.skipped = pretrain(directory)
        if summaries[name].get("stopped") not in ("done", "already done"):
          print(f"mslam demo: {name} stopped early ({summaries[name].get('stopped')})", file=sys.stderr)
          return 1

    includes = [f"include '{config.resolve_gin_file(f, search)}'" for f in gin_files[3:]]
    side, beside = None, {}
    if not (args.no_ablation and args.no_translation) and not args.one_process:
      side = _start_side_stages(out, {
          "model_dir": model_dir, "corpus_dir": corpus_dir, "eval_dir": os.path.join(out, "eval"),
          "ablation_dir": None if args.no_ablation else ablation_dir,
          "translation_dir": None if args.no_translation else translation_dir,
          "eval_bindings": includes + user, "gin_files": gin_files[3:], "user": user, "search": list(search or [])})
      parts = [p for p, off in (("the ablation's zero-shot evaluation", args.no_ablation),
                                ("the translation fine-tuning", args.no_translation)) if not off]
      print(f"\n   {' and '.join(parts)} run beside the sweep (log: {os.path.join(out, SIDE_LOG)})", flush=True)
    try:
      with Stage(timings, "eval", f"4/6 evaluation sweep -> {os.path.join(out, 'eval')}") as stage:
        from mslam_jax.evaluation import sweep  # pylint: disable=g-import-not-at-top
        steps_before = os.path.exists(os.path.join(out, "eval", f"step_{summaries['pretrain']['final_step']}",
                                                   "metrics.json"))
        metrics = sweep.evaluate_run(model_dir, corpus_dir=corpus_dir, bindings=includes + user,
                                     search_paths=search, output_dir=os.path.join(out, "eval"))
        if side is not None:
          beside, side = _finish_side_stages(out, side), None
        if not args.no_ablation:  # its figures join the checkpoint's report (read back when done beside)
          metrics = sweep.evaluate_run(model_dir, corpus_dir=corpus_dir, bindings=includes + user,
                                       ablation_model_dir=ablation_dir, search_paths=search,
                                       output_dir=os.path.join(out, "eval"))
        stage.skipped = steps_before
    finally:
      if side is not None:  # this process failed or was interrupted: the second one must not outlive it
        side.kill()
    if "ablation_eval" in beside:
      timings["ablation_eval"] = dict(beside["ablation_eval"], beside="eval")
    if args.no_ablation:  # an earlier run's ablation figures stay in the checkpoint's report: not this run's
      from mslam_jax.evaluation import zero_shot  # pylint: disable=g-import-not-at-top
      metrics = {k: v for k, v in metrics.items() if not k.partition("/")[0].endswith(zero_shot.ABLATION_SUFFIX)}

    if not args.no_translation:
      with Stage(timings, "translation", f"5/6 speech translation X->En fine-tuning -> {translation_dir}") as stage:
        translated, stage.skipped = finetune_translation(model_dir, corpus_dir, translation_dir, gin_files[3:],
                                                         user, search)
        metrics = {**metrics, **{k: v for k, v in translated.items() if k.startswith(TRANSLATION_PREFIX)}}
        if translated.get("eval_failed/translation"):
          logging.warning("The translation evaluator failed (see the log above); its figures are null")
      if "translation" in beside:  # the work was the second process's: its time, not this read-back's
        timings["translation"] = dict(beside["translation"], beside="eval")

    with Stage(timings, "report", f"6/6 report -> {os.path.join(out, REPORT_FILE)}"):
      report = _write_report(out, manifest, metrics, summaries, timings, train_steps, args,
                             start_wall, start_cpu, model_dir, ablation_dir, translation_dir)
    _save_report(out, report, timings, start_wall, start_cpu)
  finally:
    gin.clear_config()
  print("\n" + _format_summary(report), flush=True)
  return 0


def _write_report(out: str, manifest: dict, metrics: dict, summaries: dict, timings: dict, train_steps: int,
                  args: argparse.Namespace, start_wall: float, start_cpu: float, model_dir: str,
                  ablation_dir: str, translation_dir: str) -> dict:
  from mslam_jax import training_curves  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import report as report_lib  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import xtreme_table  # pylint: disable=g-import-not-at-top
  figures, curves, records = [], {}, {}
  titles = {"pretrain": "mSLAM-CTC + cross-modal pre-training (tiny model, built-in corpus)",
            "pretrain_speech_only": "speech-only ablation (same steps)"}
  for name, directory in (("pretrain", model_dir), ("pretrain_speech_only", ablation_dir)):
    if name not in summaries:
      continue
    png = os.path.join(out, f"training_curves_{name}.png")
    curves[name], records[name] = _curves(directory, png, titles[name])
    figures.append(png)
  if len(records) == 2:
    png = os.path.join(out, "training_curves_joint_vs_speech_only.png")
    training_curves.plot_comparison({"joint (mSLAM-CTC + cross-modal)": records["pretrain"],
                                     "speech-only ablation": records["pretrain_speech_only"]},
                                    COMPARED_TERMS, png, title="speech objectives: joint vs speech-only pre-training")
    figures.append(png)
  eval_dir = os.path.join(out, "eval", f"step_{summaries['pretrain']['final_step']}")
  if os.path.isdir(eval_dir):
    figures += sorted(os.path.join(eval_dir, f) for f in os.listdir(eval_dir) if f.endswith(".png"))
  if not args.no_translation:  # a skipped stage's earlier run, if any, is not reported
    if os.path.exists(os.path.join(translation_dir, "metrics.jsonl")):
      png = os.path.join(out, "training_curves_translation.png")
      curves["translation"], _ = _curves(translation_dir, png, "speech translation X->En fine-tuning")
      figures.append(png)
    png = bleu_over_steps(translation_dir, os.path.join(out, "translation_bleu_over_steps.png"))
    if png:
      figures.append(png)

  missing = [k for k in REQUIRED_METRICS if _finite_or_none(metrics.get(k)) is None
             and not (args.no_translation and k.startswith(TRANSLATION_PREFIX))
             and not (args.no_ablation and k == ABLATION_FIGURE)]
  if missing:
    logging.warning("No finite value for %s (see the evaluation log above)", missing)
  report = {k: _finite_or_none(metrics.get(k)) for k in REQUIRED_METRICS}
  report.update({
      "headline": {k: _finite_or_none(v) for k, v in report_lib.headline(metrics).items()},
      "metrics": {k: _finite_or_none(v) for k, v in sorted(metrics.items())},
      "evaluated_step": summaries["pretrain"]["final_step"],
      "train_steps": train_steps,
      "timings": timings,
      "loss_curves": curves,
      "corpus": {"dir": os.path.join(out, "corpus"), "languages": sorted(manifest["languages"]),
                 "held_out_languages": manifest["held_out_languages"], "streams": manifest["streams"],
                 "hours": {s: round(sum(v.get("hours", 0.0) for v in by_split.values()), 4)
                           for s, by_split in manifest["totals"].items()}},
      "runs": {"pretrain": model_dir, "pretrain_speech_only": None if args.no_ablation else ablation_dir,
               "eval": os.path.join(out, "eval"), "translation": None if args.no_translation else translation_dir},
      "xtreme_table": xtreme_table.rows_as_dicts(xtreme_table.xtreme_rows(metrics)),
      "figures": figures,
      "command": " ".join(["mslam", "demo"] + sys.argv[2:]) if sys.argv[1:2] == ["demo"] else None,
  })
  return report


def _save_report(out: str, report: dict, timings: dict, start_wall: float, start_cpu: float) -> None:
  timings["total"] = {"wall_s": round(time.time() - start_wall, 1), "cpu_s": round(_cpu_seconds() - start_cpu, 1)}
  # What the run would take on an otherwise idle machine of this many cores (CPU time spread over
  # them; compiles are single-threaded, so this is a lower bound).
  timings["total"]["idle_machine_estimate_s"] = round(timings["total"]["cpu_s"] / (os.cpu_count() or 1), 1)
  with open(os.path.join(out, REPORT_FILE), "w") as f:
    json.dump(report, f, indent=1)
  with open(os.path.join(out, REPORT_MD), "w", encoding="utf-8") as f:
    f.write(_markdown_report(out, report))


def _markdown_report(out: str, report: dict) -> str:
  """OUT/report.md: the results table, the XTREME-S-style table and the figures."""
  from mslam_jax.evaluation import xtreme_table  # pylint: disable=g-import-not-at-top
  rows = [xtreme_table.Row(**r) for r in report["xtreme_table"]]
  lines = [f"# mslam demo: results at pre-training step {report['evaluated_step']}", "",
           "```", results_table(report["metrics"] | {k: v for k, v in report.items() if k in REQUIRED_METRICS}),
           "```", ""]
  if rows:
    lines += ["## XTREME-S-style table", "",
              "Built-in stand-ins of the benchmarks (eSpeak speech of CLDR strings): the paper's columns say what "
              "mSLAM reached on the real benchmark, not a figure to compare with.", "",
              xtreme_table.markdown_table(rows)]
  lines += ["## Figures", ""] + [f"![{os.path.splitext(os.path.basename(p))[0]}]({os.path.relpath(p, out)})"
                                 for p in report["figures"]]
  return "\n".join(lines) + "\n"


def _format_summary(report: dict) -> str:
  lines = [f"Results at pre-training step {report['evaluated_step']} "
           f"(held-out languages: {', '.join(report['corpus']['held_out_languages']) or 'none'})", "",
           results_table(report["metrics"] | {k: v for k, v in report.items() if k in REQUIRED_METRICS}), ""]
  for name, summary in report["loss_curves"].items():
    terms = summary["terms"]
    parts = [f"{k} {v['first']:.4g} -> {v['last']:.4g}" for k, v in terms.items()]
    lines.append(f"{name} (steps {summary['first_step']}..{summary['last_step']}): " + "; ".join(parts))
  t = report["timings"]
  lines += ["", "timings: " + ", ".join(f"{k} {v['wall_s']:.0f} s wall / {v['cpu_s']:.0f} s CPU"
                                       + (" (beside the sweep)" if v.get("beside") else "") for k, v in t.items())
            + f" (idle-machine estimate {t['total']['idle_machine_estimate_s']:.0f} s)",
            f"report: {os.path.join(os.path.dirname(report['runs']['eval']), REPORT_FILE)} (and {REPORT_MD}, with "
            "the XTREME-S-style table)",
            "figures: " + ", ".join(os.path.basename(p) for p in report["figures"])]
  return "\n".join(lines)
