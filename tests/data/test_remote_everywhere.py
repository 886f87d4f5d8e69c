"""A run directory and a corpus that are not on the local disk: training, resuming, restoring,
evaluating and fine-tuning reach them only through remote-capable paths.

MODEL_DIR is gs://bucket/... (conftest.py's `fake_gcs`: epath, TensorStore and google-cloud-storage
served from memory). CORPUS_DIR is ram://... (`tf_ram`: TensorFlow's in-memory filesystem): tf.data
reads corpus shards through TensorFlow's filesystems, which reach gs:// in production but cannot be
pointed at a fake one.
"""
import json
import os

import gin
import jax
import numpy as np
import pytest
import soundfile
from etils import epath

from mslam_jax import checkpoints
from mslam_jax import cli
from mslam_jax import config
from mslam_jax import storage
from mslam_jax import train
from mslam_jax import training_curves
from mslam_jax.data import pipeline
from mslam_jax.data import vocabularies
from mslam_jax.evaluation import base
from mslam_jax.evaluation import data as eval_data
from mslam_jax.evaluation import downstream
from mslam_jax.evaluation import finetune
from mslam_jax.evaluation import finetune_job
from mslam_jax.evaluation import langid
from mslam_jax.evaluation import report
from tests.trainer.helpers import STANDIN_GIN


def test_metrics_and_vocabulary_on_gs(fake_gcs):
  path = "gs://bucket/run/metrics.jsonl"
  writer = train.JsonLinesWriter(path, remote_every_s=3600)
  writer.write_scalars(1, {"loss": 3.0})
  writer.write_scalars(2, {"loss": 2.0})
  assert not epath.Path(path).exists()  # an object is rewritten whole, so not at every line
  writer.flush()
  assert training_curves.read_metrics(path) == {1: {"loss": 3.0}, 2: {"loss": 2.0}}
  writer.close()
  resumed = train.JsonLinesWriter(path)  # a resumed run keeps the earlier lines
  resumed.write_scalars(2, {"loss": 1.5})
  resumed.write_scalars(3, {"loss": 1.0})
  resumed.close()
  assert training_curves.read_metrics(path) == {1: {"loss": 3.0}, 2: {"loss": 1.5}, 3: {"loss": 1.0}}
  assert finetune_job.losses("gs://bucket/run") == [3.0, 1.5, 1.0]

  vocab = vocabularies.CharacterVocabulary(sorted(set("héllo wörld")))
  vocab.save("gs://bucket/run/vocab")
  loaded = vocabularies.load_vocabulary("gs://bucket/run/vocab")
  assert loaded.encode("wörld") == vocab.encode("wörld") and loaded.vocab_size == vocab.vocab_size
  with pytest.raises(FileNotFoundError, match="gs://bucket/nothing"):
    vocabularies.load_vocabulary("gs://bucket/nothing")


def test_evaluation_reports_on_gs(fake_gcs):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  step_dir = "gs://bucket/run/eval/step_4"
  fig = plt.figure()
  storage.save_figure(fig, f"{step_dir}/langid_confusion_speech.png")
  plt.close(fig)
  metrics = {"ctc_cer": 0.5, "translation_bleu": 2.0, "translation_bleu_baseline": 0.0}
  report.write_checkpoint_report(step_dir, 4, metrics, evaluators=["ctc"])
  text = epath.Path(f"{step_dir}/report.md").read_text()
  assert "![langid_confusion_speech](langid_confusion_speech.png)" in text and "XTREME-S" in text
  assert report.read_checkpoint_metrics(step_dir, ["ctc"]) == metrics
  assert report.read_checkpoint_metrics(step_dir, ["ctc", "retrieval"]) is None  # must evaluate again
  report.write_sweep_report("gs://bucket/run/eval", {2: {"ctc_cer": 0.7}, 4: metrics})
  assert epath.Path("gs://bucket/run/eval/sweep.png").exists()
  assert "| [4](step_4/report.md)" in epath.Path("gs://bucket/run/eval/report.md").read_text()


def test_corpus_on_a_remote_filesystem(tf_ram, builtin_corpus_dir):
  corpus = tf_ram(builtin_corpus_dir, "ram://corpus")
  assert eval_data.load_manifest(corpus) == eval_data.load_manifest(builtin_corpus_dir)
  assert eval_data.training_languages(corpus) == eval_data.training_languages(builtin_corpus_dir)
  remote = eval_data.read_utterances(corpus, "paired", "test", max_per_lang=2)
  local = eval_data.read_utterances(builtin_corpus_dir, "paired", "test", max_per_lang=2)
  assert [u.text for u in remote] == [u.text for u in local] and remote
  assert eval_data.load_vocabulary(corpus).vocab_size == eval_data.load_vocabulary(builtin_corpus_dir).vocab_size
  try:
    iterator = pipeline.builtin_step_iterator(corpus, ["SPEECH_BATCH = 2", "TEXT_BATCH = 2", "PAIRED_BATCH = 2"])
    assert config.macro("CORPUS_DIR") == corpus  # kept as given, not made a local path
    batch = next(iter(iterator))
    shapes = lambda tree: {s: {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in d.items()} for s, d in tree.items()}  # pylint: disable=unnecessary-lambda-assignment
    assert shapes(batch) == shapes(iterator.element_spec)  # the batch contract, read from ram://
    assert set(batch) == {"speech", "text", "paired"} and batch["paired"]["tokens_mask"].any()
  finally:
    gin.clear_config()


def test_train_and_resume_with_the_run_directory_on_gs(fake_gcs):
  run = "gs://bucket/runs/standin"
  args = lambda steps: ["train", f"--gin_file={STANDIN_GIN}", f"--gin.MODEL_DIR='{run}'",  # pylint: disable=unnecessary-lambda-assignment
                        f"--gin.TRAIN_STEPS={steps}", "--gin.train.async_checkpoints=False"]
  try:
    assert cli.main(args(2)) == 0
    gin.clear_config()
    assert checkpoints.checkpoint_steps(run) == [1, 2]  # (the first step's checkpoint, then every 2)
    assert f"MODEL_DIR = '{run}'" in (epath.Path(run) / "operative_config.gin").read_text()
    assert sorted(training_curves.read_metrics(f"{run}/metrics.jsonl")) == [1, 2]
    state_2 = checkpoints.load_params(checkpoints.step_dir(run, 2))
    assert cli.main(args(4)) == 0  # resumes from step 2's train state and data position on gs://
    gin.clear_config()
    assert checkpoints.checkpoint_steps(run) == [1, 2, 4]
    lines = [json.loads(l) for l in epath.Path(f"{run}/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3, 4]  # kept lines 1-2, then 3-4: not a fresh start
    assert all(np.isfinite(r["loss"]) for r in lines)
    state_4 = checkpoints.load_params(checkpoints.step_dir(run, 4))
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: not np.array_equal(a, b), state_2, state_4))
    assert any(moved)  # the resumed run trained on from the restored state
  finally:
    gin.clear_config()


def _upload(local_dir: str, remote_dir: str) -> None:
  for root, _, names in os.walk(local_dir):
    for name in names:
      target = epath.Path(remote_dir) / os.path.relpath(os.path.join(root, name), local_dir)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(epath.Path(root, name).read_bytes())


@pytest.mark.slow
def test_restore_evaluate_and_finetune_from_gs_on_a_remote_corpus(fake_gcs, tf_ram, tiny_run, builtin_corpus_dir,
                                                                   tmp_path, capsys):
  corpus = tf_ram(builtin_corpus_dir, "ram://corpus")
  run = "gs://bucket/runs/tiny"
  step = checkpoints.checkpoint_steps(tiny_run)[-1]
  _upload(checkpoints.step_dir(tiny_run, step), checkpoints.step_dir(run, step))
  (epath.Path(run) / "operative_config.gin").write_text((epath.Path(tiny_run) / "operative_config.gin").read_text())
  try:
    model, params, restored = config.load_run(run)  # the run's config and parameters read from gs://
    assert restored == step
    checkpoints.check_corpus(checkpoints.step_dir(run, step), corpus, run)  # the same vocabulary: passes
    out = f"{run}/eval/step_{step}"
    ctx = base.EvalContext(model=model, params=params, step=step, model_dir=run, corpus_dir=corpus, out_dir=out)
    settings = finetune.FinetuneConfig(steps=2, checkpoint_every=1, freeze="frozen", pretrained_head=None)
    result = base.run_evaluators(
        [langid.LangIDEvaluator(modalities=("speech",), max_train_per_lang=4, max_test_per_lang=2),
         downstream.CTCFinetuneEvaluator(max_train_per_lang=2, max_test_per_lang=1, beam_size=1, config=settings)],
        ctx)
    assert not result.failed and "langid_accuracy_speech" in result.metrics and "ctc_cer" in result.metrics
    written = {p.name for p in epath.Path(out).iterdir()}
    assert {"langid_probe_speech.npz", "langid_confusion_speech.png", "ctc_finetune_loss.png"} <= written
    assert langid.LinearProbe.load(f"{out}/langid_probe_speech.npz").classes_.size > 1
    (head,) = (epath.Path(run) / finetune_job.FINETUNE_SUBDIR).iterdir()  # the CTC head's own run directory
    source = json.loads((head / finetune_job.SOURCE_FILE).read_text())
    assert source["corpus_dir"] == corpus and source["model_dir"] == run
    assert checkpoints.checkpoint_steps(str(head)) == [1, 2] and (head / "operative_config.gin").exists()
    assert len(finetune_job.losses(str(head))) == 2
    # A user's clip transcribed by that head, its JSON lines written to gs:// as well.
    wav = str(tmp_path / "clip.wav")
    soundfile.write(wav, 0.1 * np.random.RandomState(0).randn(16000).astype(np.float32), 16000)
    gin.clear_config()
    assert cli.main(["transcribe", "--model_dir", str(head), wav, "--out", f"{run}/transcripts/clip.jsonl"]) == 0
    printed = json.loads(capsys.readouterr().out)["results"]
    written = (epath.Path(run) / "transcripts" / "clip.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in written] == printed and printed[0]["file"] == wav
  finally:
    gin.clear_config()
