"""mslam_jax/garbage_collector.py: what every command sets for Python's collector before it traces."""
import gc
import weakref

import pytest

from mslam_jax import cli
from mslam_jax import garbage_collector


class Node:
  """A weak-referenceable object that can sit in a reference cycle."""


@pytest.fixture
def default_collector():
  """CPython's settings for the test, then the suite's (conftest tunes the collector) again."""
  threshold = gc.get_threshold()
  gc.unfreeze()
  gc.set_threshold(700, 10, 10)
  yield
  # Refrozen without tune()'s full collection: late in a suite it walks millions of objects (1.4-1.7 s).
  gc.freeze()
  gc.set_threshold(*threshold)


@pytest.mark.usefixtures("default_collector")
def test_tune_freezes_what_lives_and_raises_only_the_first_threshold(monkeypatch):
  monkeypatch.delenv(garbage_collector.ENV_VAR, raising=False)
  assert gc.get_freeze_count() == 0
  alive = [[] for _ in range(100)]
  garbage = Node()
  garbage.self = garbage
  dead = weakref.ref(garbage)
  del garbage
  assert garbage_collector.tune()
  # What lives is frozen; a cycle that was garbage is freed, not frozen.
  assert gc.get_freeze_count() >= len(alive) and dead() is None
  assert gc.get_threshold() == (garbage_collector.FIRST_GENERATION_THRESHOLD, 10, 10)
  # The collector still runs by itself: a cycle made afterwards goes once enough objects follow it.
  garbage = Node()
  garbage.self = garbage
  dead = weakref.ref(garbage)
  del garbage
  kept = [[] for _ in range(2 * garbage_collector.FIRST_GENERATION_THRESHOLD)]
  assert dead() is None and len(kept) == 2 * garbage_collector.FIRST_GENERATION_THRESHOLD
  # A user's larger threshold stays.
  gc.set_threshold(10 * garbage_collector.FIRST_GENERATION_THRESHOLD, 10, 10)
  garbage_collector.tune()
  assert gc.get_threshold()[0] == 10 * garbage_collector.FIRST_GENERATION_THRESHOLD


@pytest.mark.usefixtures("default_collector")
@pytest.mark.parametrize("value", ["default", "off", "False"])
def test_default_keeps_cpythons_settings(monkeypatch, value):
  monkeypatch.setenv(garbage_collector.ENV_VAR, value)
  assert not garbage_collector.tune()
  assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


@pytest.mark.usefixtures("default_collector")
def test_every_command_tunes_the_collector_after_its_imports(monkeypatch, capsys):
  monkeypatch.delenv(garbage_collector.ENV_VAR, raising=False)
  assert cli.main(["data", "languages"]) == 0
  assert "eng" in capsys.readouterr().out
  assert gc.get_threshold()[0] == garbage_collector.FIRST_GENERATION_THRESHOLD and gc.get_freeze_count() > 0
