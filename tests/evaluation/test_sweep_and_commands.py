"""`mslam eval` sweeps over checkpoints, and the user commands, on a fake run (synthetic.py)."""
import json
import os

import gin
import jiwer
import numpy as np
import pytest
import soundfile

from mslam_jax import checkpoints
from mslam_jax import cli
from mslam_jax import config
from mslam_jax.evaluation import sweep
from mslam_jax.evaluation import registry, report
from tests.evaluation import synthetic


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  corpus = synthetic.write_corpus(str(tmp_path_factory.mktemp("corpus")), per_split={"train": 12, "test": 6})
  model_dir = str(tmp_path_factory.mktemp("run"))
  synthetic.write_run(model_dir, corpus)
  return model_dir, corpus


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_checkpoint_selection(run_dir, tmp_path):
  model_dir, _ = run_dir
  assert checkpoints.checkpoint_steps(model_dir) == [2, 4]
  assert checkpoints.select_steps(model_dir, "latest") == [4]
  assert checkpoints.select_steps(model_dir, "all") == [2, 4]
  assert checkpoints.select_steps(model_dir, "2") == [2]
  with pytest.raises(FileNotFoundError, match="step 3"):
    checkpoints.select_steps(model_dir, 3)
  with pytest.raises(FileNotFoundError):
    checkpoints.select_steps(str(tmp_path), "latest")
  params, step = checkpoints.restore_params(model_dir, 2)
  assert step == 2
  assert set(params) == {"frontend", "text_embed", "shared"}


def test_eval_gin_over_the_run_config(run_dir):
  model_dir, corpus = run_dir
  config.parse_run_config(model_dir, ["runs/eval.gin"], ["FinetuneConfig.steps = 7"])
  # The run's config names no evaluators and binds CORPUS_DIR; eval.gin must win for the first and
  # must not reset the second to REQUIRED.
  assert gin.query_parameter("build_evaluators.names") == [
      "retrieval", "langid", "langid_finetune", "ctc", "zero_shot", "alignment", "embedding_map"]
  assert gin.query_parameter("%CORPUS_DIR") == corpus
  assert gin.query_parameter("FinetuneConfig.steps") == 7
  assert config.required_macros_unset() == []


class _Counting:
  name = "counting"

  def __init__(self):
    self.calls = []

  def evaluate(self, ctx):
    self.calls.append(ctx.step)
    return {"param_sum": float(np.sum(ctx.params["frontend"]["kernel"]))}


def test_sweep_writes_reports_and_skips_evaluated(run_dir, tmp_path):
  model_dir, _ = run_dir
  config.parse_run_config(model_dir)
  model = config.build_model()
  assert isinstance(model, synthetic.SpectralModel) and model.dim == 64
  counting = _Counting()
  out = str(tmp_path / "eval")
  results = sweep.evaluate_checkpoints(model_dir=model_dir, model=model, checkpoints="all", output_dir=out,
                                          evaluators=[counting])
  assert counting.calls == [2, 4]
  assert results[2]["param_sum"] != results[4]["param_sum"]  # each step's own parameters
  for step in (2, 4):
    saved = json.load(open(os.path.join(out, f"step_{step}", "metrics.json")))
    assert saved["step"] == step and saved["metrics"]["param_sum"] == pytest.approx(results[step]["param_sum"])
    assert os.path.exists(os.path.join(out, f"step_{step}", "report.md"))
  assert os.path.exists(os.path.join(out, "report.md"))
  again = sweep.evaluate_checkpoints(model_dir=model_dir, model=model, checkpoints="all", output_dir=out,
                                        evaluators=[counting])
  assert counting.calls == [2, 4]  # nothing re-evaluated
  assert again[4]["param_sum"] == pytest.approx(results[4]["param_sum"])
  sweep.evaluate_checkpoints(model_dir=model_dir, model=model, checkpoints="latest", output_dir=out,
                                evaluators=[counting], force=True)
  assert counting.calls == [2, 4, 4]


@registry.register("fake_zero_shot")
class _FakeZeroShot:
  """Stands in for the zero-shot evaluator (whose own test is in test_evaluators.py)."""
  runs = []

  def evaluate(self, ctx):
    self.runs.append((ctx.step, ctx.model.dim))
    # The parameters must fit the model they are applied to.
    assert ctx.params["frontend"]["kernel"].shape[-1] == ctx.model.dim
    return {"zero_shot_cer": 0.5, "zero_shot_cer/ccc": 0.5, "other_figure": 1.0}


def test_speech_only_ablation_joins_the_report(run_dir, tmp_path):
  model_dir, corpus = run_dir
  # The ablation run has a model of its own (here another width; in mSLAM, no cross-modal nor CTC
  # parameters): it must be evaluated under its own operative config, not the joint run's.
  ablation_dir = str(tmp_path / "speech_only")
  synthetic.write_run(ablation_dir, corpus, steps=(3,), dim=32)
  out = str(tmp_path / "eval")
  _FakeZeroShot.runs.clear()
  for _ in range(2):
    results = sweep.sweep(model_dir, "all", evaluators=["fake_zero_shot"], ablation_model_dir=ablation_dir,
                             bindings=["evaluate_ablation.evaluator = 'fake_zero_shot'"], output_dir=out)
  # The ablation's latest checkpoint on its own model, then the run's two steps; a second sweep
  # reads everything back.
  assert _FakeZeroShot.runs == [(3, 32), (2, 64), (4, 64)]
  for step in (2, 4):
    metrics = results[step]
    assert metrics["zero_shot_cer_speech_only_ablation"] == 0.5 and metrics["zero_shot_cer"] == 0.5
    assert "zero_shot_cer_speech_only_ablation/ccc" in metrics and "other_figure_speech_only_ablation" not in metrics
  assert "zero_shot_cer_speech_only_ablation" in open(os.path.join(out, "step_4", "report.md")).read()
  assert os.path.exists(os.path.join(out, "speech_only_ablation", "step_3", "metrics.json"))


def test_mslam_eval_command_with_ablation(run_dir, tmp_path, capsys):
  model_dir, corpus = run_dir
  ablation_dir = str(tmp_path / "speech_only")
  synthetic.write_run(ablation_dir, corpus, steps=(5,), dim=16)
  rc = cli.main(["eval", "--model_dir", model_dir, "--out", str(tmp_path / "eval"),
                 "--ablation_model_dir", ablation_dir, "--gin.build_evaluators.names=['fake_zero_shot']",
                 "--gin.evaluate_ablation.evaluator='fake_zero_shot'"])
  assert rc == 0
  line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert line["step"] == 4 and line["zero_shot_cer_speech_only_ablation"] == 0.5


def test_report_markdown(tmp_path):
  metrics = {"ctc_cer": 0.25, "retrieval_r1_speech_to_text": 0.5, "ctc_cer/eng": 0.2, "other": float("nan")}
  path = report.write_checkpoint_report(str(tmp_path), 10, metrics)
  text = open(path).read()
  assert "| ctc_cer | 0.25 |" in text and "| ctc_cer/eng | 0.2 |" in text and "| other | n/a |" in text
  assert report.headline(metrics) == {"retrieval_r1_speech_to_text": 0.5, "ctc_cer": 0.25}
  sweep = report.write_sweep_report(str(tmp_path), {10: metrics, 20: dict(metrics, ctc_cer=0.1)})
  assert "| [20](step_20/report.md) |" in open(sweep).read()
  assert os.path.exists(tmp_path / "sweep.png")


def test_mslam_eval_command(run_dir, tmp_path, capsys):
  model_dir, _ = run_dir
  out = str(tmp_path / "cli_eval")
  rc = cli.main(["eval", "--model_dir", model_dir, "--step", "all", "--out", out,
                 "--gin.build_evaluators.names=['retrieval', 'langid']"])
  assert rc == 0
  lines = [json.loads(l) for l in capsys.readouterr().out.strip().splitlines()]
  assert [l["step"] for l in lines] == [2, 4]
  assert 0 <= lines[-1]["retrieval_r1_speech_to_text"] <= 1 and lines[-1]["langid_accuracy_speech"] > 0.8
  assert os.path.exists(os.path.join(out, "step_4", "langid_probe_speech.npz"))
  gin.clear_config()
  assert cli.main(["eval", "--model_dir", str(tmp_path / "nothing")]) == 2


def test_finetune_align_retrieve_langid_commands(run_dir, tmp_path, capsys):
  model_dir, corpus = run_dir
  ft = str(tmp_path / "ctc")
  rc = cli.main(["finetune", "--task", "ctc", "--init_from", model_dir, "--gin.MODEL_DIR='" + ft + "'",
                 "--freeze", "frozen", "--steps", "150",
                 "--gin.FinetuneConfig.learning_rate=1e-2", "--gin.finetune_run.max_test_per_lang=3"])
  assert rc == 0
  metrics = json.loads(capsys.readouterr().out)
  assert metrics["ctc_cer"] < 0.5 and metrics["final_step"] == 150
  # A run directory like pre-training's: checkpoints, per-step metrics, where it came from.
  assert checkpoints.checkpoint_steps(ft)[-1] == 150
  assert os.path.exists(os.path.join(ft, "metrics.jsonl")) and os.path.exists(os.path.join(ft, "source.json"))
  gin.clear_config()
  # The pre-training run's own MODEL_DIR is never taken for the fine-tuning run's.
  assert cli.main(["finetune", "--task", "ctc", "--init_from", model_dir]) == 2

  audio, words, starts, ends = synthetic.synthesize("abc dea", "aaa")
  wav = str(tmp_path / "utt.wav")
  soundfile.write(wav, audio, 16000)
  gin.clear_config()
  grid, png = str(tmp_path / "utt.TextGrid"), str(tmp_path / "utt.png")
  assert cli.main(["align", "--model_dir", ft, wav, "abc dea", "--textgrid", grid, "--png", png]) == 0
  result = json.loads(capsys.readouterr().out)
  assert [w["label"] for w in result["words"]] == ["abc", "dea"]
  errors = [abs(w["start_ms"] - s) + abs(w["end_ms"] - e) for w, s, e in zip(result["words"], starts, ends)]
  assert max(errors) < 200, (result["words"], starts, ends)
  assert open(grid).read().count('class = "IntervalTier"') == 2 and os.path.getsize(png) > 0
  # Boundary offsets from a file (as the alignment evaluator writes them) move the words.
  offsets = tmp_path / "alignment_offsets.json"
  offsets.write_text('{"start_ms": -40.0, "end_ms": 20.0}')
  gin.clear_config()
  assert cli.main(["align", "--model_dir", ft, wav, "abc dea", "--offsets", str(offsets)]) == 0
  moved = json.loads(capsys.readouterr().out)["words"]
  assert [(w["start_ms"], w["end_ms"]) for w in moved] == [
      (max(0.0, w["start_ms"] - 40.0), min(result["duration_ms"], w["end_ms"] + 20.0)) for w in result["words"]]
  offsets.write_text("[]")
  gin.clear_config()
  assert cli.main(["align", "--model_dir", ft, wav, "abc dea", "--offsets", str(offsets)]) == 2
  # The clip's language, for a model with language vectors: a registry code, or a clear stop.
  gin.clear_config()
  assert cli.main(["align", "--model_dir", ft, wav, "abc dea", "--lang", "deu"]) == 0
  assert [w["label"] for w in json.loads(capsys.readouterr().out)["words"]] == ["abc", "dea"]
  gin.clear_config()
  assert cli.main(["align", "--model_dir", ft, wav, "abc dea", "--lang", "zzq"]) == 2
  assert "unknown language code 'zzq'" in capsys.readouterr().err

  # Transcription of a user's files: an unreadable one is named, skipped and counted, the rest
  # transcribed; word times come from aligning each transcript to its clip.
  broken = tmp_path / "broken.wav"
  broken.write_bytes(b"RIFF, but not audio")
  jsonl = tmp_path / "transcripts.jsonl"
  gin.clear_config()
  assert cli.main(["transcribe", "--model_dir", ft, wav, str(broken), "--timestamps", "--out", str(jsonl)]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["decoding"] == "greedy" and [r["file"] for r in out["results"]] == [wav]
  assert [s["file"] for s in out["skipped"]] == [str(broken)] and "not an audio file" in out["skipped"][0]["reason"]
  greedy = out["results"][0]["text"]
  assert jiwer.cer("abc dea", greedy) < 0.5, greedy
  assert [w["label"] for w in out["results"][0]["words"]] == greedy.split()
  assert [json.loads(line) for line in jsonl.read_text().splitlines()] == out["results"]
  # Beam search fused with the corpus' character LM.
  gin.clear_config()
  assert cli.main(["transcribe", "--model_dir", ft, wav, "--corpus_dir", corpus]) == 0
  out = json.loads(capsys.readouterr().out)
  assert out["decoding"] == "beam search with a character LM" and out["beam_size"] == 8
  assert jiwer.cer("abc dea", out["results"][0]["text"]) < 0.5, out["results"][0]["text"]
  # Mistakes stop before any model loads (exit 2); nothing readable is exit 1.
  for flags in (["--beam", "-1"], ["--corpus_dir", corpus, "--beam", "0"], ["--lang", "zzq"]):
    gin.clear_config()
    assert cli.main(["transcribe", "--model_dir", ft, wav] + flags) == 2, flags
  gin.clear_config()
  assert cli.main(["transcribe", "--model_dir", ft, str(broken)]) == 1
  capsys.readouterr()

  texts = tmp_path / "texts.txt"
  texts.write_text("abc dea\nfed cab\n")
  gin.clear_config()
  assert cli.main(["retrieve", "--model_dir", model_dir, "--audio", wav, wav, "--texts", str(texts)]) == 0
  out = json.loads(capsys.readouterr().out)
  assert len(out["audio_to_text"]) == 2 and len(out["text_to_audio"]) == 2
  assert out["reranked_by_ctc"] is False  # the stand-in model has no CTC head to rerank with
  assert {b["text"] for b in out["audio_to_text"][0]["best"]} == {"abc dea", "fed cab"}

  bbb = str(tmp_path / "bbb.wav")
  soundfile.write(bbb, synthetic.synthesize("ghi def", "bbb")[0], 16000)
  gin.clear_config()
  # The spelling of earlier releases still works, with a warning.
  assert cli.main(["langid", "--checkpoint", model_dir, "--corpus_dir", corpus, wav, bbb]) == 0
  captured = capsys.readouterr()
  out = json.loads(captured.out)
  assert "--checkpoint is deprecated" in captured.err and "use --model_dir" in captured.err
  assert [r["language"] for r in out["results"]] == ["aaa", "bbb"]


def test_evaluator_heads_are_fine_tuning_jobs_cached_in_the_run(run_dir, tmp_path):
  from mslam_jax.evaluation import downstream, finetune  # pylint: disable=g-import-not-at-top
  model_dir, corpus = run_dir
  config.parse_run_config(model_dir)
  model = config.build_model()
  settings = finetune.FinetuneConfig(freeze="frozen", steps=12, checkpoint_every=4, learning_rate=1e-2,
                                     warmup_steps=2)
  evaluators = [downstream.CTCFinetuneEvaluator(config=settings, max_test_per_lang=2)]
  out = str(tmp_path / "eval")
  first = sweep.evaluate_checkpoints(model_dir=model_dir, model=model, checkpoints="latest", output_dir=out,
                                     evaluators=evaluators, corpus_dir=corpus)
  heads = [d for d in os.listdir(os.path.join(model_dir, "finetune")) if d.startswith("ctc_step4_")]
  assert len(heads) == 1
  head_dir = os.path.join(model_dir, "finetune", heads[0])
  # A run directory of its own, trained by the Trainer: checkpoints, a loss per step, its source.
  assert checkpoints.checkpoint_steps(head_dir)[-1] == 12
  lines = open(os.path.join(head_dir, "metrics.jsonl")).read().splitlines()
  assert [json.loads(l)["step"] for l in lines] == list(range(1, 13))
  assert json.load(open(os.path.join(head_dir, "source.json")))["step"] == 4
  # Evaluated again (forced): the head is read back, not trained again, and scores the same.
  again = sweep.evaluate_checkpoints(model_dir=model_dir, model=model, checkpoints="latest", output_dir=out,
                                     evaluators=evaluators, corpus_dir=corpus, force=True)
  assert open(os.path.join(head_dir, "metrics.jsonl")).read().splitlines() == lines
  assert again[4]["ctc_cer"] == first[4]["ctc_cer"]
  # Under another binding that changes what the model computes without changing its parameters
  # (here the frontend's per-utterance normalisation), a head of its own: the cached one was tuned
  # on other features.
  gin.bind_parameter("SpeechFrontend.normalize", False)
  sweep.evaluate_checkpoints(model_dir=model_dir, model=model, checkpoints="latest", output_dir=out,
                             evaluators=evaluators, corpus_dir=corpus, force=True)
  assert len([d for d in os.listdir(os.path.join(model_dir, "finetune")) if d.startswith("ctc_step4_")]) == 2
