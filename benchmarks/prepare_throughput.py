"""Throughput of `mslam data prepare` (DirectRunner) on a synthetic Common Voice locale: N clips of
S seconds of 48 kHz MP3. Prints hours of corpus audio prepared per minute of wall time.

  python benchmarks/prepare_throughput.py 240 5                 # speech + paired streams
  python benchmarks/prepare_throughput.py 240 5 paired          # one stream
  python benchmarks/prepare_throughput.py 240 5 --direct_num_workers=2 --direct_running_mode=multi_processing
"""
import logging
import os
import sys
import tempfile
import time

import numpy as np
import soundfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mslam_jax.data.corpora import prepare  # pylint: disable=wrong-import-position


def main(argv):
  n, seconds = int(argv[1]), float(argv[2])
  beam_flags = [a for a in argv[3:] if a.startswith("--")]
  streams = [a for a in argv[3:] if not a.startswith("--")] or None
  rng = np.random.default_rng(0)
  root = tempfile.mkdtemp()
  locale = os.path.join(root, "fr")
  os.makedirs(os.path.join(locale, "clips"))
  rows = ["client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent"]
  for i in range(n):
    audio = (0.1 * rng.standard_normal(int(seconds * 48000))).astype(np.float32)
    soundfile.write(os.path.join(locale, "clips", f"c{i}.mp3"), audio, 48000, format="MP3")
    rows.append(f"k{i}\tc{i}.mp3\tphrase numéro {i}\t2\t0\t\t\t")
  with open(os.path.join(locale, "train.tsv"), "w", encoding="utf-8") as f:
    f.write("\n".join(rows) + "\n")
  start = time.time()
  manifest = prepare.prepare("common_voice", root, tempfile.mkdtemp(), shard_size=max(1, n // 8),
                             pipeline_options=beam_flags, streams=streams)
  wall = time.time() - start
  hours = n * seconds / 3600
  print(f"{n} clips, {hours * 60:.1f} min of audio into {sorted(manifest['totals'])} in {wall:.1f} s: "
        f"{hours / (wall / 60):.2f} h of audio per minute ({' '.join(beam_flags) or 'DirectRunner defaults'})")


if __name__ == "__main__":
  logging.basicConfig(level=logging.WARNING)
  main(sys.argv)
