"""Paths that may be local or remote (gs://bucket/run, any etils.epath scheme): the one place that
knows a URI is not a local path, and the small writes (text, figures) that run and output
directories receive. Corpus shards are read by tf.data, so a corpus directory must also be a
TensorFlow filesystem path (local, gs://, ...)."""
import os

from etils import epath


def is_remote(path) -> bool:
  return "://" in os.fspath(path)


def absolute(path) -> str:
  """A local path made absolute; a URI kept as it is (os.path.abspath would turn it into a local
  path under the working directory)."""
  path = os.fspath(path)
  return path if is_remote(path) else os.path.abspath(path)


def makedirs(path) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def write_text(path, text: str) -> None:
  """Writes `text` to `path`, making its directory first."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")


def save_figure(fig, path, **kwargs) -> None:
  """fig.savefig to a local or remote path (its format from the extension), making its directory."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("wb") as f:
    fig.savefig(f, format=path.suffix.lstrip(".") or None, **kwargs)
