"""XTREME-S Tasks over prepared corpora: each benchmark task reads its corpus' paired records with
the target it is scored on (transcript, translation, language or intent)."""
import numpy as np
import pytest
import seqio

from mslam_jax.data import vocabularies
from mslam_jax.data.corpora import tasks as corpora_tasks
from mslam_jax.tasks import xtreme_s
from tests.data.corpora import trees

pytestmark = pytest.mark.slow  # three Beam prepares


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  return trees.prepare_trees(tmp_path_factory, ("covost2", "minds14", "fleurs"))


def _examples(mixture: str, split: str) -> list[dict]:
  """Every example of a split, language Task by language Task (a Mixture samples)."""
  out = []
  for task in seqio.get_mixture_or_task(mixture).tasks:
    if split in task.splits:
      ds = task.get_dataset(sequence_length=None, split=split, shuffle=False, trim_output_features=False,
                            num_epochs=1)
      out += list(ds.as_numpy_iterator())
  return out


def test_each_task_carries_the_target_it_is_scored_on(prepared):
  mixtures = xtreme_s.register_xtreme_s(prepared)
  assert set(mixtures) == {"xtreme_s_covost2_ast", "xtreme_s_minds14_intent", "xtreme_s_fleurs_asr",
                           "xtreme_s_fleurs_langid"}
  vocabulary = corpora_tasks.shared_vocabulary(prepared)

  covost = _examples("xtreme_s_covost2_ast", "train")
  assert covost and all(ex["targets"][-1] == vocabularies.EOS_ID for ex in covost)
  # The English translation, not the French transcript.
  assert {vocabulary.decode(ex["targets"][:-1].tolist()) for ex in covost} <= {f"Sentence {i}." for i in range(5)}
  assert all(np.abs(ex["audio"]).max() > 0.01 for ex in covost)

  intents = _examples("xtreme_s_minds14_intent", "train") + _examples("xtreme_s_minds14_intent", "test")
  assert intents and {ex["label"] for ex in intents} == {b"abroad"} and all(ex["targets"].size == 0 for ex in intents)

  langid = _examples("xtreme_s_fleurs_langid", "train")
  assert len({ex["label"] for ex in langid}) == len(mixtures["xtreme_s_fleurs_langid"]) > 1
  asr = _examples("xtreme_s_fleurs_asr", "train")
  assert asr and all(ex["targets"].size >= 2 and not ex["label"] for ex in asr)
  # Registering the same corpora again keeps the Tasks; an unknown corpus is refused by name.
  assert xtreme_s.register_xtreme_s(prepared) == mixtures
  with pytest.raises(ValueError, match="mc4"):
    xtreme_s.register_xtreme_s({"mc4": prepared["fleurs"]})
