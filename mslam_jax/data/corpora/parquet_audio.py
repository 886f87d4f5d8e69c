"""The encoded audio of one row of a parquet shard (its own module: corpora.base reads it, the
parquet reader lists the rows). A worker decodes rows in order, so the last row groups are cached."""
import functools

from mslam_jax.data import audio as audio_lib


@functools.lru_cache(maxsize=4)
def _row_group(path: str, index: int) -> list:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  return pq.ParquetFile(path).read_row_group(index, columns=["audio"]).column("audio").to_pylist()


def audio_bytes(path: str, row_group: int, row: int) -> bytes:
  value = _row_group(path, row_group)[row]
  if not value or not value.get("bytes"):
    raise audio_lib.BadItem("missing_audio", f"{path} row group {row_group} row {row} has no audio bytes")
  return value["bytes"]
