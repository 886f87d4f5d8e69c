"""benchmarks/zero_shot_probe.py: a run without phone-level injection is refused at start; on a
tiny run with them, the recognizer starts as the run's own phone CTC head, learns, and leaves the
spelling path (the run's own parameters) as it was; every figure is a rate for every group."""
import types

import gin
import jax
import numpy as np
import pytest

from mslam_jax import cli
from tests import benchmark_scripts
from tests import conftest


def _load():
  return benchmark_scripts.load("zero_shot_probe")


def test_segments_leave_out_stress_and_length_marks():
  assert _load().segments("ˈaːb ˌsɛˑn") == "ab sɛn"


@pytest.fixture(scope="module")
def phone_run(builtin_corpus_dir, tmp_path_factory) -> str:
  """The tiny run with phone CTC and phone-level text injection, 3 steps."""
  model_dir = str(tmp_path_factory.mktemp("phone_run"))
  gin.clear_config()
  try:
    args = conftest.tiny_train_args(model_dir, builtin_corpus_dir) + [
        "--gin_file=experiments/phone_ctc.gin", "--gin_file=experiments/phone_injection.gin",
        "--gin.ObjectiveWeights.text_ctc=0.3", "--gin.make_step_iterator.text_phones_length=64",
        "--gin.make_step_iterator.paired_phones_length=64"]
    assert cli.main(args) == 0
  finally:
    gin.clear_config()
  return model_dir


def test_a_run_without_phone_injection_is_refused_naming_the_gin_files(capsys):
  for phone_inputs, text_ctc_input in ((False, "characters"), (True, "characters"), (False, "phones")):
    encoder = types.SimpleNamespace(phone_inputs=phone_inputs)
    model = types.SimpleNamespace(network=types.SimpleNamespace(encoder=encoder, text_ctc_input=text_ctc_input))
    with pytest.raises(SystemExit) as exit_info:
      _load().check_run(model)
    assert exit_info.value.code == 2
    assert "experiments/phone_injection.gin" in capsys.readouterr().err
  encoder = types.SimpleNamespace(phone_inputs=True)
  _load().check_run(types.SimpleNamespace(network=types.SimpleNamespace(encoder=encoder, text_ctc_input="phones")))


@pytest.mark.slow  # trains a tiny phone run and fine-tunes its recognizer
def test_probe_hears_with_the_runs_head_learns_and_keeps_the_spelling_path(phone_run, builtin_corpus_dir):
  from mslam_jax import config  # pylint: disable=g-import-not-at-top
  from mslam_jax.data import phones  # pylint: disable=g-import-not-at-top
  from mslam_jax.evaluation import data as eval_data  # pylint: disable=g-import-not-at-top
  module = _load()
  gin.clear_config()
  try:
    model, params, _ = config.load_run(phone_run)
    probe = module.Probe(model, params)
    # The training languages' clips of the first length bucket: one fixed batch.
    clips = [u for u in eval_data.read_utterances(builtin_corpus_dir, "paired", "train")
             if u.phones and len(u.audio) <= module.BUCKETS_S[0] * eval_data.SAMPLE_RATE]
    assert len(clips) >= 2
    audio, mask = eval_data.pad_audio([c.audio for c in clips], len(clips), eval_data.SAMPLE_RATE)

    # Before fine-tuning the recognizer is the run's tied phone CTC head.
    def tied(net, audio, audio_mask):
      enc = net.encoder
      features, frames = enc.speech_frontend(audio, audio_mask, True)
      return enc.phone_embedding.attend(enc.speech_layers(enc.project_speech(features, True), frames, True)[1])
    expected = jax.jit(lambda p, a, m: model.network.apply({"params": p}, a, m, method=tied))(probe.params, audio, mask)
    got, _ = probe._hear(probe.recognizer(), audio, mask)  # pylint: disable=protected-access
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-5, atol=1e-5)

    reference = [phones.encode(c.phones) for c in clips]
    vocab = eval_data.load_vocabulary(builtin_corpus_dir)
    spelled = probe.spell(reference, vocab)
    recognizer, losses = probe.finetune(clips, 40, batch_size=len(clips), rate=1e-2, warmup=2, progress=False)
    # One batch, 40 steps: phone CTC per phone well below where it started.
    assert np.mean(losses[-5:]) < 0.5 * losses[0], losses
    # Only the copy trained: the run's phone table and its spelling path are as they were.
    assert not np.allclose(np.asarray(recognizer["head"]), np.asarray(probe.recognizer()["head"]))
    assert probe.spell(reference, vocab) == spelled

    out = module.probe(phone_run, builtin_corpus_dir, steps=2, per_lang=3, batch_size=2, progress=False)
  finally:
    gin.clear_config()
  assert set(out["groups"]) == {"held-out", "training"}
  assert out["groups"]["held-out"]["clips"] >= 1 and "ukr" in out["groups"]["held-out"]["per"]
  for figures in out["groups"].values():
    for name in ("per", "per_segments", "spelling_cer", "cascade_cer"):
      assert "all" in figures[name] and all(0.0 <= v < 10.0 for v in figures[name].values()), name
