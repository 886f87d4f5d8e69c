"""`mslam finetune --xtreme_s TASK --corpora NAME=DIR`: a head fine-tuned on an XTREME-S Mixture of
prepared corpora (batches streamed by the step iterator, resumable exactly), scored on the test
split with the benchmark's metric; a bad task or a missing corpus stops it at start."""
import json
import math
import os

import gin
import numpy as np
import pytest
import seqio

from mslam_jax import checkpoints
from mslam_jax import cli
from mslam_jax.evaluation import finetune_job
from mslam_jax.evaluation import xtreme_s_data
from tests.data.corpora import trees

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 2
# The benchmark task, the corpora it is given (another corpus beside its own must not matter), the
# metric keys it reports, and its own flags.
TASKS = {
    "fleurs_asr": (("fleurs", "covost2"), ("fleurs_asr_cer", "fleurs_asr_wer", "fleurs_asr_cer/afr",
                                           "fleurs_asr_cer/cmn"), ()),
    "fleurs_langid": (("fleurs",), ("fleurs_langid_accuracy", "fleurs_langid_accuracy/afr",
                                    "fleurs_langid_accuracy/cmn"), ()),
    "covost2_ast": (("covost2",), ("covost2_ast_bleu", "covost2_ast_chrf", "covost2_ast_bleu_baseline",
                                   "covost2_ast_bleu/fra"),
                    ("--gin.DECODER_EMBED_DIM=32", "--gin.DECODER_LAYERS=1", "--gin.DECODER_HEADS=2",
                     "--gin.DECODER_MLP_DIM=64", "--gin.MAX_DECODE_LENGTH=8", "--gin.TranslationModel.beam_size=1")),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  return trees.prepare_trees(tmp_path_factory, ("fleurs", "covost2", "minds14"))


def _finetune(args: list[str]) -> int:
  gin.clear_config()
  try:
    return cli.main(["finetune", f"--gin_search_path={os.path.join(REPO, 'gin_configs')}", *args])
  finally:
    gin.clear_config()


@pytest.mark.slow  # three short fine-tunes of the tiny model (compiles)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_each_head_trains_on_its_mixture_and_reports_its_metric(task, prepared, tiny_pretrained, tmp_path, capsys):
  names, keys, flags = TASKS[task]
  out = str(tmp_path / task)
  corpora = ",".join(f"{n}={prepared[n]}" for n in names)
  rc = _finetune(["--xtreme_s", task, "--corpora", corpora, "--init_from", tiny_pretrained, f"--gin.MODEL_DIR='{out}'",
                  "--steps", str(STEPS), "--freeze", "frozen", "--gin.FinetuneConfig.batch_size=2",
                  f"--gin.FinetuneConfig.checkpoint_every={STEPS}", "--gin.FinetuneConfig.max_audio_seconds=2.0",
                  "--gin.XtremeSData.target_length=32", "--gin.finetune_run.max_test_per_lang=1",
                  "--gin.finetune_run.beam_size=2", "--gin.finetune_run.progress_bar=False",
                  "--gin.finetune_run.tensorboard=False", *flags])
  captured = capsys.readouterr()
  assert rc == 0, captured.err[-3000:]
  printed = json.loads(captured.out)
  assert printed["final_step"] == STEPS
  assert checkpoints.checkpoint_steps(out)[-1] == STEPS
  written = json.load(open(os.path.join(out, "metrics.json")))["metrics"]
  for key in keys:
    assert math.isfinite(written[key]), (key, written[key])
    if "/" not in key:
      assert printed[key] == written[key]
  source = json.load(open(os.path.join(out, finetune_job.SOURCE_FILE)))
  assert source["xtreme_s"] == task and source["corpora"] == {n: prepared[n] for n in names}
  if task == "fleurs_langid":
    assert source["classes"] == ["afr", "cmn"]  # the languages of the train split, sorted
  if task == "covost2_ast":  # scored against the English translations as written
    rows = [json.loads(line) for line in open(os.path.join(out, "translations.jsonl"))]
    assert rows and all(row["reference"] in {f"Sentence {i}." for i in range(10)} for row in rows), rows
  # Every step trained on a full batch of the task's own examples (the loss is a real number).
  losses = finetune_job.losses(out)
  assert len(losses) == STEPS and all(math.isfinite(x) for x in losses)


def _take(iterator, n: int) -> list:
  return [next(iterator) for _ in range(n)]


@pytest.mark.slow  # the module's corpora are Beam prepares
def test_the_streamed_batches_resume_exactly(prepared):
  corpora = {"fleurs": prepared["fleurs"]}
  data = xtreme_s_data.XtremeSData(target_length=32, shuffle_buffer_size=4)
  make = lambda shard=seqio.ShardInfo(0, 1): xtreme_s_data.step_iterator(  # pylint: disable=g-long-lambda
      "fleurs_asr", corpora, 2, 32000, seed=3, data=data, shard_info=shard)
  straight = make()
  assert {k: v.shape for k, v in straight.element_spec["paired"].items()} == {
      "audio": (2, 32000), "audio_mask": (2, 32000), "lang": (2,), "tokens": (2, 32), "tokens_mask": (2, 32)}
  head = _take(straight, 3)
  state = straight.get_state()
  want = _take(straight, 4)  # past the end of the 6 training clips: the Mixture repeats
  # The CTC batch: characters only (no EOS or other reserved ids), a valid mask over them.
  for batch in head + want:
    p = batch["paired"]
    assert (p["tokens"][p["tokens_mask"] == 1] >= 5).all() and (p["tokens"][p["tokens_mask"] == 0] == 0).all()
    assert p["tokens_mask"].sum(1).min() > 0 and p["audio_mask"].sum(1).min() > 0
  assert "pipeline" in state  # the tf.data iterator's own checkpoint
  # (Resuming at the wrong place would show: the stream does not repeat itself batch for batch.)
  assert any(not np.array_equal(a["paired"]["tokens"], b["paired"]["tokens"]) for a, b in zip(head, want))
  resumed = make()
  resumed.set_state(state)
  got = _take(resumed, 4)
  for a, b in zip(want, got):
    for key in a["paired"]:
      np.testing.assert_array_equal(a["paired"][key], b["paired"][key])
  # Resumed by skipping (no pipeline checkpoint): the same batches.
  skipped = make()
  skipped.set_state({k: v for k, v in state.items() if k != "pipeline"})
  for a, b in zip(want, _take(skipped, 4)):
    np.testing.assert_array_equal(a["paired"]["tokens"], b["paired"]["tokens"])
  # The conversion is part of the data config: a state saved with other classes is refused.
  langid = lambda classes: xtreme_s_data.step_iterator(  # pylint: disable=g-long-lambda
      "fleurs_langid", corpora, 2, 32000, data=data, classes=classes, shard_info=seqio.ShardInfo(0, 1))
  with pytest.raises(ValueError, match="data config changed"):
    langid(["afr", "cmn"]).set_state(langid(["afr", "cmn", "eng"]).get_state())
  # MINDS-14's classes are the intents its train records carry (the test tree has one: too few).
  with pytest.raises(ValueError, match=r"at least two classes .* found \['abroad'\]"):
    xtreme_s_data.register("minds14_intent", {"minds14": prepared["minds14"]}, data)
    xtreme_s_data.classes("minds14_intent", {"minds14": prepared["minds14"]})
  # Two processes each read their shard: half the global batch each.
  assert make(seqio.ShardInfo(1, 2)).element_spec["paired"]["audio"].shape == (1, 32000)
  assert next(make(seqio.ShardInfo(1, 2)))["paired"]["audio"].shape == (1, 32000)


def test_an_unknown_task_or_a_missing_corpus_names_what_to_pass(tmp_path):
  with pytest.raises(ValueError, match=r"--xtreme_s one of \[.*'fleurs_asr'"):
    finetune_job.finetune_run(xtreme_s="fleurs_asrr", corpora={"fleurs": "/nowhere"}, init_from_dir=str(tmp_path),
                              model_dir=str(tmp_path / "out"))
  with pytest.raises(ValueError, match="pass --corpora covost2=DIR"):
    finetune_job.finetune_run(xtreme_s="covost2_ast", corpora={"fleurs": "/nowhere"}, init_from_dir=str(tmp_path),
                              model_dir=str(tmp_path / "out"))
  with pytest.raises(ValueError, match="--xtreme_s TASK"):
    finetune_job.finetune_run(corpora={"fleurs": "/nowhere"}, init_from_dir=str(tmp_path),
                              model_dir=str(tmp_path / "out"), corpus_dir=str(tmp_path))


@pytest.mark.slow  # needs the session's tiny run
def test_the_command_exits_2_at_start_on_bad_xtreme_s_flags(tiny_pretrained, tmp_path, capsys):
  base = ["--init_from", tiny_pretrained, f"--gin.MODEL_DIR='{tmp_path / 'out'}'"]
  for args, message in ((["--xtreme_s", "mls_asr", "--corpora", f"fleurs={tmp_path}"], "--corpora mls=DIR"),
                        (["--xtreme_s", "nope", "--corpora", f"fleurs={tmp_path}"], "--xtreme_s one of"),
                        (["--xtreme_s", "fleurs_asr", "--corpora", "fleurs"], "NAME=DIR"),
                        (["--xtreme_s", "fleurs_asr"], "--corpora NAME=DIR"),
                        (["--xtreme_s", "fleurs_asr", "--task", "ctc", "--corpora", f"fleurs={tmp_path}"],
                         "exclude each other"),
                        (["--xtreme_s", "fleurs_asr", "--corpora", f"fleurs={tmp_path / 'missing'}"],
                         "prepare the corpus first")):
    assert _finetune(base + args) == 2, args
    err = capsys.readouterr().err
    assert message in err, (args, err[-2000:])
  assert not os.path.exists(tmp_path / "out" / "checkpoints")  # stopped before any training
