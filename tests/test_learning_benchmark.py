"""benchmarks/learning_benchmark.py's summary: means, seed spreads, targets and the zero-shot gain."""
import json
import os
import sys
import warnings

import jax
import pytest

from mslam_jax import cpu_host
from tests import benchmark_scripts

learning_benchmark = benchmark_scripts.load("learning_benchmark")


def _report(r1, cer, zero_shot, ablation):
  return {"metrics": {"retrieval_r1_speech_to_text": r1, "retrieval_chance_r1": 0.01, "ctc_cer": cer,
                      "zero_shot_cer": zero_shot, "zero_shot_cer_speech_only_ablation": ablation}}


def test_summary_reports_mean_spread_targets_and_zero_shot_gain():
  w2v = [[{"step": s, "speech/contrastive_accuracy": a, "codebook/perplexity": p}
          for s, a, p in ((10, 0.05, 40.0), (20, 0.2, 30.0), (30, 0.35, 50.0), (40, 0.45, 52.0))],
         [{"step": s, "speech/contrastive_accuracy": a, "codebook/perplexity": p}  # a second seed
          for s, a, p in ((10, 0.05, 45.0), (20, 0.2, 40.0), (30, 0.2, 41.0), (40, 0.3, 42.0))]]
  summary = learning_benchmark.summarize([_report(0.7, 0.1, 0.5, 0.7), _report(0.9, 0.15, 0.5, 0.7)], w2v)
  r1 = summary["figures"]["retrieval_r1_speech_to_text"]
  assert r1["mean"] == pytest.approx(0.8) and r1["spread"] == pytest.approx(0.2)
  assert r1["met"] and r1["reference"] == 0.01
  cer = summary["figures"]["ctc_cer"]
  assert cer["mean"] == pytest.approx(0.125) and cer["met"]  # a ceiling
  gain = summary["zero_shot_relative_gain"]
  assert gain["value"] == pytest.approx(2 / 7) and gain["met"]
  w = summary["w2v_bert"]
  # Each seed's accuracy over its second half (0.4 and 0.25): their mean and spread.
  assert w["contrastive_accuracy_final"] == pytest.approx(0.325) and w["seeds"] == 2
  assert w["contrastive_accuracy_spread"] == pytest.approx(0.15)
  # Perplexity "throughout": the lowest of any seed at any logged step.
  assert w["perplexity_min"] == 30.0 and w["perplexity_min"] < w["perplexity_target"]
  assert [r["perplexity_min"] for r in w["runs"]] == [30.0, 40.0]
  table = learning_benchmark.format_table(summary)
  assert "| ctc_cer | 0.125 | 0.05 |" in table
  assert "contrastive accuracy (2nd half, 40 steps) | 0.325 | 0.15 | chance ~0.01 | 0.3 | yes |" in table
  assert "codebook perplexity (lowest logged, any seed) | 30 | | | 32 | no |" in table


def test_the_lm_fused_zero_shot_gain_is_its_own_row():
  with_lm = [dict(r["metrics"], zero_shot_cer_lm=lm, zero_shot_cer_lm_speech_only_ablation=lm_ablation)
             for r, lm, lm_ablation in ((_report(0.3, 0.2, 0.36, 0.38), 0.2, 0.28), (_report(0.3, 0.2, 0.36, 0.38), 0.2, 0.32))]
  summary = learning_benchmark.summarize([{"metrics": m} for m in with_lm], None)
  assert summary["zero_shot_relative_gain"]["value"] == pytest.approx(1 - 0.36 / 0.38)
  assert summary["zero_shot_relative_gain_lm"]["value"] == pytest.approx(1 / 3)  # 1 - 0.2 / 0.3
  assert summary["zero_shot_relative_gain_lm"]["met"] and not summary["zero_shot_relative_gain"]["met"]
  table = learning_benchmark.format_table(summary)
  assert "| zero-shot CER gain of joint over speech-only, with a character LM | 0.333 | | | 0.2 | yes |" in table
  assert summary["figures"]["zero_shot_cer_lm_speech_only_ablation"]["spread"] == pytest.approx(0.04)
  assert "zero_shot_relative_gain_self_trained" not in summary  # the reports hold no self-trained figure


def test_the_in_domain_gain_of_the_zero_shot_heads_is_a_row_without_a_target():
  reports = [{"metrics": dict(_report(0.3, 0.2, 0.36, 0.38)["metrics"], zero_shot_seen_cer=0.15,
                              zero_shot_seen_cer_speech_only_ablation=0.2)}]
  summary = learning_benchmark.summarize(reports, None)
  seen = summary["zero_shot_relative_gain_seen"]
  assert seen["value"] == pytest.approx(0.25) and seen["target"] is None and seen["met"] is None
  assert summary["zero_shot_relative_gain"]["target"] == 0.2 and not summary["zero_shot_relative_gain"]["met"]
  assert "| the zero-shot heads' CER gain on the training languages (in-domain) | 0.25 | | |  |  |" in (
      learning_benchmark.format_table(summary))


def test_the_self_trained_zero_shot_gain_is_its_own_row():
  reports = [{"metrics": dict(_report(0.3, 0.2, 0.36, 0.38)["metrics"], zero_shot_self_trained_cer=0.2,
                              zero_shot_self_trained_cer_speech_only_ablation=0.32)}]
  summary = learning_benchmark.summarize(reports, None)
  assert summary["zero_shot_relative_gain_self_trained"]["value"] == pytest.approx(0.375)
  assert "| zero-shot CER gain of joint over speech-only, after self-training | 0.375 | | | 0.2 | yes |" in (
      learning_benchmark.format_table(summary))


def test_a_collapsed_ablation_leaves_the_zero_shot_gain_unjudged(tmp_path):
  (tmp_path / "metrics.jsonl").write_text(
      '{"step": 5, "health/frame_cosine": 0.4}\n{"step": 10, "loss": 1.0}\n{"step": 10, "health/frame_cosine": 1.0}\n')
  assert learning_benchmark.final_frame_cosine(str(tmp_path)) == 1.0
  assert learning_benchmark.final_frame_cosine(str(tmp_path / "absent")) is None
  healthy, collapsed = _report(0.3, 0.2, 0.38, 0.40), _report(0.3, 0.2, 0.37, 0.80)
  healthy["ablation_final_frame_cosine"], collapsed["ablation_final_frame_cosine"] = 0.44, 1.0
  collapsed["seed"] = 7
  summary = learning_benchmark.summarize([healthy, collapsed], None)
  gain = summary["zero_shot_relative_gain"]
  assert gain["value"] == pytest.approx(1 - 0.375 / 0.6)  # 37.5 %: the collapse, not transfer
  assert gain["met"] is None and gain["ablation_collapsed_seeds"] == [7]
  assert "not comparable: the ablation collapsed on seed(s) 7" in learning_benchmark.format_table(summary)
  healthy2 = dict(collapsed, ablation_final_frame_cosine=0.5)
  assert learning_benchmark.summarize([healthy, healthy2], None)["zero_shot_relative_gain"]["met"] is True


def _job(tmp_path, name, seconds, rc=0):
  # Each job records when it ran, then sleeps and exits with rc.
  code = (f"import time, sys; open({str(tmp_path / (name + '.t'))!r}, 'w').write(str(time.time())); "
          f"time.sleep({seconds}); open({str(tmp_path / (name + '.t'))!r}, 'a').write(' ' + str(time.time())); "
          f"sys.exit({rc})")
  return (name, [sys.executable, "-c", code], str(tmp_path / f"{name}.log"))


def _spans(tmp_path, names):
  return {n: tuple(map(float, (tmp_path / f"{n}.t").read_text().split())) for n in names}


def test_runs_go_side_by_side_at_most_jobs_at_a_time(tmp_path):
  names = ["a", "b", "c"]
  walls = learning_benchmark.run_parallel([_job(tmp_path, n, 1.0) for n in names], 2, poll_s=0.05)
  assert set(walls) == set(names)
  spans = _spans(tmp_path, names)
  overlaps = lambda x, y: spans[x][0] < spans[y][1] and spans[y][0] < spans[x][1]
  assert overlaps("a", "b")  # two at once
  assert not overlaps("a", "c") or not overlaps("b", "c")  # never three
  assert spans["c"][0] >= min(spans["a"][1], spans["b"][1]) - 0.05


@pytest.mark.skipif(len(getattr(os, "sched_getaffinity", lambda _: ())(0)) < 2, reason="needs 2 CPUs and affinity")
def test_runs_side_by_side_are_pinned_each_to_a_core_of_its_own(tmp_path):
  """Each job runs on the CPU slot that no running job holds; a slot comes free when its job ends. No
  job is forked with Python code to run in the child, which JAX warns can deadlock."""
  jax.devices()  # JAX's fork hook is in place, as in a benchmark process that has used JAX
  slots = cpu_host.cpu_slots(2)
  record = "import os, sys, time; print(sorted(os.sched_getaffinity(0))); time.sleep(0.5)"
  jobs = [(n, [sys.executable, "-c", record], str(tmp_path / f"{n}.log")) for n in ("a", "b", "c")]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    learning_benchmark.run_parallel(jobs, 2, poll_s=0.05, slots=slots)
  assert not [w for w in caught if "fork" in str(w.message)]
  seen = {n: frozenset(json.loads((tmp_path / f"{n}.log").read_text())) for n in ("a", "b", "c")}
  assert seen["a"] == slots[0] and seen["b"] == slots[1] and seen["c"] in slots
  # Unpinned, a job keeps every CPU this process has.
  learning_benchmark.run_parallel(jobs[:1], 2, poll_s=0.05)
  assert frozenset(json.loads((tmp_path / "a.log").read_text().splitlines()[-1])) == frozenset(os.sched_getaffinity(0))


def test_a_failed_run_stops_new_ones_and_names_its_log(tmp_path):
  jobs = [_job(tmp_path, "bad", 0.2, rc=3), _job(tmp_path, "slow", 1.0), _job(tmp_path, "never", 0.1)]
  with pytest.raises(SystemExit, match=r"failed: bad \(.*bad\.log\)"):
    learning_benchmark.run_parallel(jobs, 2, poll_s=0.05)
  assert len(_spans(tmp_path, ["slow"])["slow"]) == 2  # the running one finished
  assert not (tmp_path / "never.t").exists()


def test_seeds_sharing_the_cores_keep_their_ablation_in_one_process(tmp_path):
  """With other jobs beside it a seed's demo runs `--one-process` (a second process per demo only adds
  contention on 2 cores); alone, it keeps the demo's second process. The user's flags come last."""
  (tmp_path / "corpus").mkdir()
  shared = learning_benchmark.demo_job(str(tmp_path), 0, 10, 20, ["--gin.X=1"], shared=True)
  alone = learning_benchmark.demo_job(str(tmp_path), 1, 10, 20, ["--gin.X=1"], shared=False)
  assert "--one-process" in shared[1] and "--one-process" not in alone[1]
  assert shared[1][-1] == alone[1][-1] == "--gin.X=1"
  # Float32 matmuls on every host, before the user's flags (which may override it).
  assert shared[1].index("--gin.matmul_precision.precision = 'float32'") < shared[1].index("--gin.X=1")
  w2v = [learning_benchmark.w2v_bert_job(str(tmp_path), 10, seed) for seed in (0, 1)]
  assert all("--gin.matmul_precision.precision = 'float32'" in job[1] for job in w2v)
  # One w2v-BERT run a seed, each in its own directory and log.
  assert [job[0] for job in w2v] == ["w2v_bert_seed_0", "w2v_bert_seed_1"] and w2v[0][2] != w2v[1][2]
  assert "--gin.Trainer.seed = 1" in w2v[1][1] and learning_benchmark.w2v_dir(str(tmp_path), 1) in " ".join(w2v[1][1])
  assert shared[1][shared[1].index("--steps") + 1] == "10" and os.path.islink(tmp_path / "seed_0" / "corpus")


def test_the_training_languages_ctc_head_fine_tunes_longer(tmp_path):
  """The demo job's gin flags give the ctc evaluator four times the job's fine-tuning steps, on clips up to
  8 s, and leave the zero-shot and alignment heads (FinetuneConfig unscoped) at the job's steps and
  the demo's 5 s; the rest is shared."""
  import gin  # pylint: disable=g-import-not-at-top
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  from mslam_jax.commands import demo  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import downstream, finetune  # pylint: disable=g-import-not-at-top
  (tmp_path / "corpus").mkdir()
  command = learning_benchmark.demo_job(str(tmp_path), 0, 10, 20, [], shared=True)[1]
  bindings = [arg[len("--gin."):] for arg in command if arg.startswith("--gin.")]
  # What `mslam demo --finetune-steps 20` adds to them (demo._flag_bindings: the unscoped steps).
  bindings += [f"CORPUS_DIR = '{tmp_path}'", f"MODEL_DIR = '{tmp_path}'", "FinetuneConfig.steps = 20"]
  gin.clear_config()
  try:
    config.parse_gin(list(demo.RUN_GIN_FILES), bindings, [])
    ctc, shared = downstream.CTCFinetuneEvaluator().config, finetune.FinetuneConfig()
  finally:
    gin.clear_config()
  assert (ctc.steps, shared.steps) == (80, 20)
  assert (ctc.max_audio_seconds, shared.max_audio_seconds) == (8.0, 5.0)
  assert ctc.length_buckets == (2.0, 3.0, 4.0, 5.0, 6.0, 8.0) and shared.length_buckets == (2.0, 3.0, 4.0, 5.0)
  assert ctc.batch_size == shared.batch_size == 8 and ctc.learning_rate == shared.learning_rate


def test_every_job_shares_one_compilation_cache_unless_the_user_names_one(tmp_path, monkeypatch):
  from mslam_jax import compilation_cache  # pylint: disable=g-import-not-at-top
  # Set, then removed: monkeypatch then restores the session's value (or its absence) afterwards;
  # deleting a variable that is not set records nothing, and the one the helper sets would leak.
  monkeypatch.setenv(compilation_cache.ENV_VAR, "unset below")
  monkeypatch.delenv(compilation_cache.ENV_VAR)
  assert learning_benchmark.share_compilation_cache(str(tmp_path)) == str(tmp_path / "jax_cache")
  assert os.environ[compilation_cache.ENV_VAR] == str(tmp_path / "jax_cache")  # the jobs inherit it
  monkeypatch.setenv(compilation_cache.ENV_VAR, "/elsewhere")
  assert learning_benchmark.share_compilation_cache(str(tmp_path)) == "/elsewhere"
