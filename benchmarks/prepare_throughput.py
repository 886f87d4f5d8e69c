"""Throughput of `mslam data prepare` (DirectRunner): a synthetic Common Voice locale of N clips of S
seconds (48 kHz MP3). Usage: python benchmarks/prepare_throughput.py N S [paired|speech ...] [--beam_flag=...]"""
import os, sys, time, tempfile, logging
import numpy as np, soundfile
sys.path.insert(0, os.getcwd())
from mslam_jax.data.corpora import prepare
logging.basicConfig(level=logging.WARNING)
N, SEC = int(sys.argv[1]), float(sys.argv[2])
opts = sys.argv[3:]
rng = np.random.default_rng(0)
root = tempfile.mkdtemp()
d = os.path.join(root, "fr"); os.makedirs(os.path.join(d, "clips"))
hdr = "client_id\tpath\tsentence\tup_votes\tdown_votes\tage\tgender\taccent"
rows = [hdr]
for i in range(N):
  x = (0.1 * rng.standard_normal(int(SEC * 48000))).astype(np.float32)
  soundfile.write(os.path.join(d, "clips", f"c{i}.mp3"), x, 48000, format="MP3")
  rows.append(f"k{i}\tc{i}.mp3\tphrase numéro {i}\t2\t0\t\t\t")
open(os.path.join(d, "train.tsv"), "w").write("\n".join(rows) + "\n")
out = tempfile.mkdtemp()
t = time.time()
m = prepare.prepare("common_voice", root, out, shard_size=max(1, N // 8), pipeline_options=[o for o in opts if o.startswith("--")], streams=[o for o in opts if not o.startswith("--")] or None)
dt = time.time() - t
hours = sum(v["hours"] for by in m["totals"].values() for v in by.values()) / len(m["totals"])
print(f"common_voice mp3 48k: {N} clips, {hours*60:.2f} min of audio (x{len(m['totals'])} streams) in {dt:.1f} s "
      f"-> {hours / (dt / 60):.3f} h of audio per minute; opts={opts}")
