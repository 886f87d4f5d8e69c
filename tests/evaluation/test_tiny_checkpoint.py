"""Every evaluator through `mslam eval` on the tiny mSLAM checkpoint the session trains (conftest.tiny_run)."""
import json
import math
import os

import pytest

from mslam_jax.evaluation import registry, report

from tests.conftest import ALL_EVALUATORS

pytestmark = pytest.mark.slow  # trains and evaluates the tiny model (the session's `tiny_run`)


def test_every_evaluator_on_a_tiny_checkpoint(tiny_run):
  out = os.path.join(tiny_run, "eval", "step_3")
  with open(os.path.join(out, "metrics.json")) as f:
    saved = json.load(f)
  metrics = saved["metrics"]
  assert saved["step"] == 3
  assert metrics["eval_failed_evaluators"] == 0
  for key in ("retrieval_r1_speech_to_text", "retrieval_r1_text_to_speech", "retrieval_mrr_speech_to_text",
              "langid_accuracy_speech", "langid_accuracy_text", "langid_macro_f1_speech",
              "langid_finetune_accuracy_speech", "langid_finetune_macro_f1_speech"):
    assert 0.0 <= metrics[key] <= 1.0, key
  assert metrics["retrieval_r5_speech_to_text"] >= metrics["retrieval_r1_speech_to_text"]
  for key in ("ctc_cer", "zero_shot_cer"):
    assert metrics[key] >= 0.0 and math.isfinite(metrics[key]), key
  # The held-out language (ukr) is scored zero-shot, never in the in-domain CTC figures.
  assert "zero_shot_cer/ukr" in metrics and "ctc_cer/ukr" not in metrics
  assert "alignment_word_boundary_error_ms" in metrics
  assert metrics["alignment_num_scored"] + metrics["alignment_skipped"] > 0
  for picture in ("embedding_map.png", "langid_confusion_speech.png", "retrieval_similarity.png",
                  "ctc_finetune_loss.png"):
    assert os.path.exists(os.path.join(out, picture)), picture
  assert set(report.headline(metrics)) >= {"retrieval_r1_speech_to_text", "langid_accuracy_text", "ctc_cer",
                                           "zero_shot_cer", "alignment_word_boundary_error_ms"}
  assert set(ALL_EVALUATORS) <= set(registry.names())
