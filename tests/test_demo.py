"""`mslam demo` end to end with a toy budget: every report figure, the PNGs, and a re-run that redoes
nothing. The full-size demo is run by hand (its figures are in the project notes), never here."""
import argparse
import json
import logging
import math
import os
import subprocess
import sys

import gin
import numpy as np
import pytest
import soundfile

from mslam_jax import cli
from mslam_jax import compilation_cache
from mslam_jax import training_curves
from mslam_jax.commands import demo
from tests import conftest
from tests.trainer import helpers

pytestmark = pytest.mark.slow  # end-to-end: subprocesses that compile and train

REPO = helpers.REPO
SMOKE_ARGS = [
    "--steps", "2", "--finetune-steps", "2", "--languages", "eng,rus,ukr,zul", "--held-out", "ukr",
    "--per-language", "5",
    # One layer per stack, as the session's tiny run (conftest): every stage compiles less.
    "--gin.NUM_SPEECH_LAYERS=1", "--gin.NUM_SHARED_LAYERS=1",
    "--gin.SPEECH_BATCH=2", "--gin.TEXT_BATCH=2", "--gin.PAIRED_BATCH=2", "--gin.SPEECH_SAMPLES=32000",
    "--gin.PAIRED_SAMPLES=32000", "--gin.TEXT_LENGTH=32", "--gin.PAIRED_TEXT_LENGTH=32",
    "--gin.train.log_every=1", "--gin.train.tensorboard=False", "--gin.RetrievalEvaluator.max_per_lang=4",
    "--gin.langid_head/FinetuneConfig.steps=2",
    # The evaluators' fine-tunes train their heads alone: no backward pass through the encoder to
    # compile (the evaluation stage 38 s -> 22 s); the demo's own setting also trains its top layers.
    "--gin.FinetuneConfig.freeze='frozen'",
    # Speech translation: a few items per source language, two steps of a one-layer decoder on the
    # frozen encoder (less to compile), two test items per language.
    "--translation-steps", "2", "--gin.build_translation_data.per_language=6",
    "--gin.translate/FinetuneConfig.freeze='frozen'", "--gin.DECODER_LAYERS=1", "--gin.DECODER_EMBED_DIM=32",
    "--gin.DECODER_HEADS=2", "--gin.DECODER_MLP_DIM=64", "--gin.MAX_DECODE_LENGTH=16",
    "--gin.TranslationEvaluator.max_per_lang=2",
    # A user's objective weights must not reach the speech-only ablation.
    "--gin.ObjectiveWeights.ctc=0.5", "--gin.ObjectiveWeights.text_mlm=0.5",
]


def _demo(out: str, extra=()) -> subprocess.CompletedProcess:
  # The suite's compilation cache (conftest), not OUT/jax_cache: a second suite run compiles little.
  env = dict(helpers.env(1), **{compilation_cache.ENV_VAR: conftest.TEST_CACHE_DIR or "off"})
  # The checkout's gin configs, whatever an installed package maps `mslam_jax.gin_configs` to.
  command = [sys.executable, "-c", "import sys; from mslam_jax import cli; sys.exit(cli.main(sys.argv[1:]))",
             "demo", "--out", out, "--gin_search_path", os.path.join(REPO, "gin_configs")] + SMOKE_ARGS + list(extra)
  return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)


def _assert_png(path: str) -> None:
  import matplotlib.image  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
  image = matplotlib.image.imread(path)
  assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200, (path, image.shape)
  # A plot, not a blank canvas.
  assert float(np.std(image[..., :3])) > 0.01, path


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("demo"))
  proc = _demo(out)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
  return out, proc


def test_demo_reports_every_figure_and_draws_the_curves(demo_run):
  out, proc = demo_run
  with open(os.path.join(out, "report.json")) as f:
    report = json.load(f)
  for key in demo.REQUIRED_METRICS:
    assert isinstance(report[key], float) and math.isfinite(report[key]), (key, report[key])
  for key in ("retrieval_r1_speech_to_text", "retrieval_r1_text_to_speech", "langid_accuracy_speech",
              "langid_accuracy_text"):
    assert 0.0 <= report[key] <= 1.0, key
  for key in ("retrieval_r1_speech_to_text_seen", "retrieval_r1_speech_to_text_heldout",  # ukr's queries apart
              "retrieval_r1_speech_to_text_ctc_rerank", "retrieval_r1_text_to_speech_ctc_rerank"):
    assert 0.0 <= report["metrics"][key] <= 1.0, key
  assert report["ctc_cer"] >= 0.0 and report["alignment_word_boundary_error_ms"] >= 0.0
  # Speech translation (rus -> En; ukr held out): sacrebleu figures and the trivial baseline's, each
  # row of the XTREME-S-style table carrying our figure next to the paper's.
  for key in ("translation_bleu", "translation_bleu_baseline", "translation_bleu_heldout", "translation_chrf"):
    assert 0.0 <= report[key] <= 100.0, key
  assert set(report["metrics"]) >= {"translation_bleu/rus", "translation_bleu/ukr"}
  # Each with a paired bootstrap against the baseline, shown in the table.
  assert 0.0 < report["metrics"]["translation_bleu_p_value"] <= 1.0 and report["metrics"]["translation_bleu_ci95"] >= 0
  assert "paired bootstrap p" in proc.stdout
  rows = {(r["task"], r["metric"]): r for r in report["xtreme_table"]}
  bleu = rows[("built-in speech translation X->En", "BLEU")]
  assert (bleu["ours"], bleu["baseline"]) == (report["translation_bleu"], report["translation_bleu_baseline"])
  assert (bleu["paper_600m"], bleu["paper_2b"]) == (22.4, 24.8)
  assert rows[("built-in ASR (CTC fine-tuned)", "CER (%)")]["ours"] == pytest.approx(100 * report["ctc_cer"])
  with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
    markdown = f.read()
  assert "## XTREME-S-style table" in markdown and "| built-in speech translation X->En | BLEU |" in markdown
  with open(os.path.join(out, "eval", "report.md"), encoding="utf-8") as f:
    assert "| built-in ASR (CTC fine-tuned) | CER (%) |" in f.read()  # `mslam eval`'s report has it too
  with open(os.path.join(out, "translation", "eval", "step_2", "translations.jsonl"), encoding="utf-8") as f:
    assert {json.loads(line)["lang"] for line in f} == {"rus", "ukr"}
  # The two pre-training runs: every step logged, the speech-only one without paired/text losses in
  # its total, so the two totals differ while their speech terms start from the same init.
  curves = report["loss_curves"]
  assert set(curves) == {"pretrain", "pretrain_speech_only", "translation"}
  assert curves["translation"]["terms"]["loss"]["first"] > 0  # the fine-tuning job's metrics.jsonl
  for summary in curves.values():
    assert summary["first_step"] == 1 and summary["last_step"] == 2
  joint, speech_only = curves["pretrain"]["terms"], curves["pretrain_speech_only"]["terms"]
  assert {"loss", "speech/mlm_loss", "text/mlm_loss", "paired/ctc_loss", "paired/cross_modal_loss"} <= set(joint)
  assert not {"paired/ctc_loss", "paired/cross_modal_loss", "paired/tlm_loss", "text/mlm_loss"} & set(speech_only)
  assert speech_only["loss"]["first"] < joint["loss"]["first"]
  assert report["corpus"]["held_out_languages"] == ["ukr"]
  for stage in ("corpus", "pretrain", "pretrain_speech_only", "eval", "translation", "total"):
    assert report["timings"][stage]["cpu_s"] > 0, stage
  # The ablation's zero-shot evaluation and the translation ran in a second process beside the sweep.
  assert report["timings"]["ablation_eval"]["beside"] == report["timings"]["translation"]["beside"] == "eval"
  with open(os.path.join(out, demo.SIDE_LOG)) as f:
    assert "speech translation X->En fine-tuning" in f.read()
  for name in ("training_curves_pretrain.png", "training_curves_pretrain_speech_only.png",
               "training_curves_joint_vs_speech_only.png", "training_curves_translation.png"):
    assert os.path.join(out, name) in report["figures"]
  for path in report["figures"]:
    _assert_png(path)
  # The table is printed with the zero-shot ablation next to the joint model's figure.
  assert "zero-shot CER, speech-only ablation" in proc.stdout and "retrieval R@1 speech->text" in proc.stdout
  assert "speech translation BLEU, training sources" in proc.stdout and "most frequent target" in proc.stdout


def test_retrieve_reranks_a_ctc_runs_shortlist_by_its_ctc_head(demo_run, tmp_path, capsys):
  """`mslam retrieve` on the demo's mSLAM-CTC run: the embedding's candidates, reordered by the
  pre-trained CTC head (`--rerank_top_k`), and the embedding alone with 0."""
  out, _ = demo_run
  audio = []
  for i, seconds in enumerate((1.0, 1.5)):
    path = str(tmp_path / f"clip{i}.wav")
    soundfile.write(path, 0.1 * np.random.default_rng(i).standard_normal(int(16000 * seconds)).astype(np.float32),
                    16000)
    audio.append(path)
  texts = tmp_path / "texts.txt"
  texts.write_text("one two\nthree\nfour five six\n")
  command = ["retrieve", "--model_dir", os.path.join(out, "pretrain"), "--audio", *audio, "--texts", str(texts)]
  for extra, reranked in (([], True), (["--rerank_top_k", "0"], False)):
    gin.clear_config()
    assert cli.main(command + extra) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["reranked_by_ctc"] is reranked
    assert [len(r["best"]) for r in result["audio_to_text"]] == [3, 3]
    assert {b["text"] for b in result["audio_to_text"][0]["best"]} == {"one two", "three", "four five six"}
  gin.clear_config()


def test_speech_language_id_reads_the_ctc_heads_phonotactics(demo_run, tmp_path, capsys, caplog):
  """The joint run has a CTC head: its speech probe reads the head's phonotactics beside the
  statistics, records their units, and `mslam langid` computes the same features."""
  from mslam_jax.evaluation import langid  # pylint: disable=g-import-not-at-top
  out, _ = demo_run
  probe = langid.LinearProbe.load(os.path.join(out, "eval", "step_2", "langid_probe_speech.npz"))
  assert probe.features == langid.PHONOTACTICS and 0 < len(probe.units) <= 16
  assert min(probe.units) >= 5  # characters, no reserved id (blank among them)
  k = len(probe.units)
  assert probe.coef_.shape[1] == 6 * 64 + k + k * k  # models/tiny.gin: EMBED_DIM 64
  wav = str(tmp_path / "clip.wav")
  soundfile.write(wav, 0.1 * np.random.default_rng(0).standard_normal(16000).astype(np.float32), 16000)
  # The demo's evaluation lives in OUT/eval (--eval_dir reads its probe); with --corpus_dir alone
  # `mslam langid` fits one from the corpus, on the same features.
  for where, fitted_here in ((["--eval_dir", os.path.join(out, "eval")], False),
                             (["--corpus_dir", os.path.join(out, "corpus")], True)):
    gin.clear_config()
    caplog.clear()
    with caplog.at_level(logging.INFO):
      assert cli.main(["langid", "--model_dir", os.path.join(out, "pretrain"), *where, wav]) == 0
    assert any("No saved probe" in r.getMessage() for r in caplog.records) is fitted_here
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["language"] in set(probe.classes_.tolist())
    assert sum(t["probability"] for t in result["top"]) <= 1.0 + 1e-3
  gin.clear_config()


def test_demo_rerun_on_the_same_directory_redoes_nothing(demo_run):
  """Also in one process (`--one-process`, as the learning benchmark runs its seeds): the ablation's
  figures and the translation come from this process, the same as the second process gave."""
  out, _ = demo_run
  with open(os.path.join(out, "report.json")) as f:
    first = json.load(f)
  proc = _demo(out, ["--one-process"])
  assert proc.returncode == 0, proc.stderr[-5000:]
  with open(os.path.join(out, "report.json")) as f:
    second = json.load(f)
  for stage in ("corpus", "pretrain", "pretrain_speech_only", "eval", "translation"):
    assert second["timings"][stage]["skipped"], stage
  assert "beside the sweep" not in proc.stdout and "ablation_eval" not in second["timings"]
  assert "beside" not in second["timings"]["translation"]
  for key in demo.REQUIRED_METRICS:
    assert second[key] == first[key], key


def test_skip_flags_skip_their_stages_and_null_only_their_figures(demo_run):
  out, _ = demo_run  # after the rerun test: every other stage is done and is read back
  with open(os.path.join(out, "report.json")) as f:
    first = json.load(f)
  assert first[demo.ABLATION_FIGURE] is not None  # the checkpoint's report holds it: it must not leak back
  proc = _demo(out, ["--no-translation", "--no-ablation"])
  assert proc.returncode == 0, proc.stderr[-5000:]
  with open(os.path.join(out, "report.json")) as f:
    second = json.load(f)
  for stage in ("translation", "pretrain_speech_only"):
    assert stage not in second["timings"] and second["runs"][stage] is None, stage
  assert set(second["loss_curves"]) == {"pretrain"}  # the skipped stages' earlier curves are not reported
  assert not any(word in os.path.basename(png) for png in second["figures"] for word in ("translation", "speech_only"))
  assert not any(k.startswith(demo.ABLATION_FIGURE) for k in second["metrics"])
  for key in demo.REQUIRED_METRICS:
    skipped = key.startswith(demo.TRANSLATION_PREFIX) or key == demo.ABLATION_FIGURE
    assert second[key] == (None if skipped else first[key]), key
  assert "No finite value" not in proc.stderr  # skipped figures are not reported missing


def test_corpus_only_builds_the_corpus_and_nothing_else(tmp_path):
  out = str(tmp_path / "shared")
  proc = _demo(out, ["--corpus-only"])
  assert proc.returncode == 0, proc.stderr[-5000:]
  assert os.path.exists(os.path.join(out, "corpus", "manifest.json"))
  assert not set(os.listdir(out)) & {"pretrain", "pretrain_speech_only", "eval", "translation", "report.json"}
  assert "the corpus is in" in proc.stdout


def test_training_curves_merge_a_resumed_run_and_skip_torn_lines(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text("\n".join([
      json.dumps({"step": 1, "loss": 5.0, "speech/mlm_loss": 4.0}),
      json.dumps({"step": 2, "loss": 4.0, "speech/mlm_loss": 3.5}),
      json.dumps({"step": 2, "loss": 3.0, "speech/mlm_loss": 3.0}),  # the resumed run redid step 2
      '{"step": 3, "loss": 2.',  # a write cut off by a kill
  ]) + "\n")
  records = training_curves.read_metrics(str(path))
  assert sorted(records) == [1, 2] and records[2]["loss"] == 3.0
  summary = training_curves.summarize(records)
  assert summary["terms"]["loss"]["first"] == 5.0 and summary["terms"]["loss"]["last"] == 3.0
  assert training_curves.loss_terms(records) == ["loss", "speech/mlm_loss"]
  png = training_curves.plot_training_curves(records, str(tmp_path / "curves.png"))
  _assert_png(png)


def test_per_language_flag_keeps_the_recipes_ratio_of_streams():
  parser = argparse.ArgumentParser()
  demo.add_arguments(parser)
  bindings = demo._flag_bindings(parser.parse_args(["--per-language", "5"]))  # pylint: disable=protected-access
  assert {"build_builtin_corpus.per_language = 5", "build_builtin_corpus.paired_per_language = 10",
          "build_builtin_corpus.text_per_language = 10"} <= set(bindings)
