"""Readers of outside corpora, one module each, all yielding `base.Record`s.

`READERS` maps the `--corpus` names of `mslam data prepare` to their modules; each module has
`NAME`, `DEFAULT_STREAMS` and `read(root, counter, languages=None, **options)`.
"""
import importlib

_MODULES = ("fleurs", "common_voice", "mls", "voxpopuli", "babel", "mc4", "covost2", "minds14", "hf_parquet")


def names() -> tuple[str, ...]:
  return _MODULES


def reader(name: str):
  """The reader module of a corpus name; ValueError naming the choices when unknown."""
  if name not in _MODULES:
    raise ValueError(f"unknown corpus {name!r}; one of {', '.join(_MODULES)}")
  return importlib.import_module(f"mslam_jax.data.corpora.{name}")
