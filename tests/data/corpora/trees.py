"""Small corpus trees in each release's real on-disk layout (quirks included), written by the tests."""
import csv
import gzip
import io
import json
import os

import numpy as np
import soundfile

_rng = np.random.default_rng(0)


def tone(seconds: float, rate: int, channels: int = 1, freq: float = 220.0) -> np.ndarray:
  t = np.arange(int(seconds * rate)) / rate
  x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * _rng.standard_normal(len(t))
  return np.stack([x] * channels, axis=1).astype(np.float32) if channels > 1 else x.astype(np.float32)


def write_audio(path: str, seconds: float, rate: int, channels: int = 1, **kwargs) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  soundfile.write(path, tone(seconds, rate, channels), rate, **kwargs)
  return path


def write_lines(path: str, lines) -> str:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))
  return path


def fleurs(root: str) -> str:
  """af_za with the 7-column layout, cmn_hans_cn with the older 8-column one; one missing clip,
  one malformed row, one empty transcript, a stereo 48 kHz clip, an unknown language directory."""
  for code, eight, texts in (("af_za", False, ["Goeie môre, Suid-Afrika.", "Dit is 'n toets.", "Die son skyn."]),
                             ("cmn_hans_cn", True, ["今天天气很好。", "我们去公园吧。", "你好，世界。"])):
    for split in ("train", "dev", "test"):
      rows = []
      for i, text in enumerate(texts if split == "train" else texts[:1]):
        name = f"{1000 + i}.wav"
        rate, channels = (48000, 2) if (code == "af_za" and i == 1) else (16000, 1)
        write_audio(os.path.join(root, code, "audio", split, name), 1.0 + 0.25 * i, rate, channels)
        cols = [str(i), name, text, text.lower(), " ".join(text), str(int((1.0 + 0.25 * i) * 16000))]
        rows.append("\t".join(cols + (["spk7"] if eight else []) + ["FEMALE"]))
      if split == "train":
        rows.append("\t".join(["9", "missing.wav", "Weg.", "weg.", "w e g", "16000"] + (["s"] if eight else []) + ["MALE"]))
        rows.append("only\tthree\tfields")
        write_audio(os.path.join(root, code, "audio", split, "1008.wav"), 1.0, 16000)
        rows.append("\t".join(["8", "1008.wav", "   ", "", "", "16000"] + (["s"] if eight else []) + ["MALE"]))
      write_lines(os.path.join(root, code, f"{split}.tsv"), rows)
  write_lines(os.path.join(root, "xx_zz", "train.tsv"), [])
  return root


def common_voice(root: str) -> str:
  """fr (new header with sentence_id / sentence_domain) and sv-SE (old header, clips named without
  .mp3); quotes in sentences (QUOTE_NONE); clip_durations.tsv; a malformed row; an unknown locale."""
  def locale(code, header, rows, clips_ext=".mp3"):
    d = os.path.join(root, code)
    for name, seconds in rows.items():
      write_audio(os.path.join(d, "clips", name + clips_ext), seconds, 48000, format="MP3")
    return d
  new = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
         "gender", "accents", "variant", "locale", "segment"]
  clips = {f"common_voice_fr_{i}": 1.0 + 0.2 * i for i in range(5)}
  d = locale("fr", new, clips)
  def row(i, name, text, loc):
    return "\t".join([f"c{i}", name + ".mp3", f"s{i}", text, "", "2", "0", "", "", "", "", loc, ""])
  texts = ['Il a dit "bonjour" à tous.', "C'est la vie.", "Un deux trois.", "Quatre cinq.", "Six sept huit."]
  names = list(clips)
  write_lines(os.path.join(d, "validated.tsv"), ["\t".join(new)] + [row(i, n, t, "fr") for i, (n, t) in enumerate(zip(names, texts))])
  write_lines(os.path.join(d, "train.tsv"), ["\t".join(new)] + [row(0, names[0], texts[0], "fr"), "broken\trow"])
  write_lines(os.path.join(d, "dev.tsv"), ["\t".join(new), row(3, names[3], texts[3], "fr")])
  write_lines(os.path.join(d, "test.tsv"), ["\t".join(new), row(4, names[4], texts[4], "fr")])
  write_lines(os.path.join(d, "clip_durations.tsv"), ["clip\tduration[ms]"] + [f"{n}.mp3\t{int(s * 1000)}" for n, s in clips.items()])
  old = ["client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accent"]
  sv = {f"common_voice_sv-SE_{i}": 1.2 for i in range(3)}
  d = locale("sv-SE", old, sv)
  svt = ["Hej på dig.", "Tack så mycket.", "God natt."]
  for split, idx in (("train", [0]), ("dev", [1]), ("test", [2])):
    write_lines(os.path.join(d, f"{split}.tsv"), ["\t".join(old)] + [
        "\t".join([f"k{i}", list(sv)[i], svt[i], "2", "0", "", "", ""]) for i in idx])
  os.makedirs(os.path.join(root, "qq-QQ", "clips"), exist_ok=True)
  write_lines(os.path.join(root, "qq-QQ", "train.tsv"), ["\t".join(old)])
  return root


def mls(root: str) -> str:
  """mls_german (flac) with a 9hr limited-supervision list; one malformed id."""
  base = os.path.join(root, "mls_german")
  for split, ids in (("train", ["10_100_000001", "10_100_000002", "11_200_000003"]), ("dev", ["12_300_000004"]),
                     ("test", ["13_400_000005"])):
    lines = []
    for i, utt in enumerate(ids):
      spk, chap, _ = utt.split("_")
      write_audio(os.path.join(base, split, "audio", spk, chap, utt + ".flac"), 1.0 + 0.3 * i, 16000)
      lines.append(f"{utt}\tguten tag nummer {i}")
    if split == "train":
      lines.append("badid\tkein audio")
    write_lines(os.path.join(base, split, "transcripts.txt"), lines)
  write_lines(os.path.join(base, "train", "limited_supervision", "9hr", "handles.txt"), ["10_100_000001", "11_200_000003"])
  return root


def voxpopuli(root: str) -> str:
  """An unlabeled 75 s session cut by unlabelled_v2.tsv.gz (one 70 s segment, longer than a clip),
  a malformed segment row, and transcribed asr_{split}.tsv data."""
  event = "20190101-0900-PLENARY-3_de"
  write_audio(os.path.join(root, "raw_audios", "de", "2019", f"{event}.ogg"), 75.0, 16000, format="OGG", subtype="VORBIS")
  os.makedirs(os.path.join(root, "unlabelled_data"), exist_ok=True)
  with gzip.open(os.path.join(root, "unlabelled_data", "unlabelled_v2.tsv.gz"), "wt", encoding="utf-8") as f:
    f.write("event_id\tsegment_no\tstart\tend\n")
    f.write(f"{event}\t0\t0.0\t3.5\n{event}\t1\t4.0\t74.0\n{event}\tx\tnot-a-number\t1\n")
  header = ["id", "raw_text", "normalized_text", "speaker_id", "split", "gender", "is_gold_transcript", "accent"]
  for split, ids in (("train", ["20180101-0900-PLENARY-1-de_20180101-09:00:00_1", "20180101-0900-PLENARY-1-de_20180101-09:00:00_2"]),
                     ("dev", ["20180101-0900-PLENARY-1-de_20180101-09:00:00_3"]), ("test", ["20180101-0900-PLENARY-1-de_20180101-09:00:00_4"])):
    rows = []
    for i, utt in enumerate(ids):
      write_audio(os.path.join(root, "transcribed_data", "de", utt[:4], utt + ".ogg"), 1.5, 16000, format="OGG", subtype="VORBIS")
      rows.append("\t".join([utt, f"Herr Präsident {i}.", f"herr präsident {i}", "1234", split, "male", "True", "None"]))
    write_lines(os.path.join(root, "transcribed_data", "de", f"asr_{split}.tsv"), ["\t".join(header)] + rows)
  return root


def babel(root: str) -> str:
  """BABEL_OP1_101 (Cantonese): an 8 kHz mu-law SPHERE and a PCM one; timed turns with markup."""
  pkg = os.path.join(root, "BABEL_OP1_101", "conversational")
  for split, stem, subtype in (("training", "BABEL_OP1_101_10019_20111117_004245_inLine", "ULAW"),
                               ("dev", "BABEL_OP1_101_20000_20111118_000000_outLine", "PCM_16")):
    write_audio(os.path.join(pkg, split, "audio", stem + ".sph"), 12.0, 8000, format="NIST", subtype=subtype)
    write_lines(os.path.join(pkg, split, "transcription", stem + ".txt"), [
        "[0.000]", "<no-speech>", "[1.500]", "喂 <hes> ((你好)) *係* 我", "[4.250]", "(()) <breath>", "[6.000]",
        "早晨 ~ 你 食-", "[9.000]", "<no-speech>", "[12.000]"])
  return root


def mc4(root: str) -> str:
  """Raw json.gz files: iw (Hebrew), ru-Latn (romanized Russian), und (no language), a bad line."""
  d = os.path.join(root, "multilingual")
  os.makedirs(d, exist_ok=True)
  docs = {"iw": ["שלום עולם, זהו מסמך ראשון.\nפסקה שנייה של המסמך הזה.", "עוד מסמך עם טקסט ארוך מספיק."],
          "ru-Latn": ["Privet, kak dela segodnya u vas?\nkorotko"], "und": ["??? ??? ??? ??? ??? ??? ???"]}
  for code, texts in docs.items():
    with gzip.open(os.path.join(d, f"c4-{code}.tfrecord-00000-of-00001.json.gz"), "wt", encoding="utf-8") as f:
      for t in texts:
        f.write(json.dumps({"text": t, "timestamp": "2020", "url": "http://x"}, ensure_ascii=False) + "\n")
      if code == "iw":
        f.write("{not json\n")
  with gzip.open(os.path.join(d, "c4-iw-validation.tfrecord-00000-of-00001.json.gz"), "wt", encoding="utf-8") as f:
    f.write(json.dumps({"text": "מסמך אימות עם מספיק תווים."}, ensure_ascii=False) + "\n")
  return root


def covost2(root: str) -> str:
  """covost_v2.fr_en.tsv (backslash escapes, train_covost) over a Common Voice fr tree."""
  common_voice(root)
  names = [f"common_voice_fr_{i}" for i in range(5)]
  rows = ["path\tsentence\ttranslation\tclient_id\tsplit"]
  for i, (n, split) in enumerate(zip(names, ["train", "train_covost", "dev", "test", "train"])):
    rows.append(f"{n}.mp3\tPhrase {i} \\\"citée\\\".\tSentence {i}.\tc{i}\t{split}")
  rows.append("x.mp3\tonly\tfour\tfields")
  write_lines(os.path.join(root, "covost_v2.fr_en.tsv"), rows)
  return root


def minds14(root: str) -> str:
  """text/en-US.csv + 8 kHz wav under audio/en-US/{intent}/."""
  rows = [["filepath", "text_asr", "text_translated", "intent"]]
  for i in range(6):
    rel = f"en-US/abroad/602b9{i:03d}.wav"
    write_audio(os.path.join(root, "audio", *rel.split("/")), 1.0, 8000)
    rows.append([rel, f"i am abroad number {i}", f"i am abroad number {i}", "abroad"])
  rows.append(["en-US/abroad/missing.wav", "where is it", "where is it", "abroad"])
  os.makedirs(os.path.join(root, "text"), exist_ok=True)
  with open(os.path.join(root, "text", "en-US.csv"), "w", encoding="utf-8", newline="") as f:
    csv.writer(f).writerows(rows)
  return root


def hf_parquet(root: str) -> str:
  """Common Voice as the Hub's parquet export: audio struct {bytes, path}, sentence, locale."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  for split in ("train", "test"):
    audios, sentences, locales = [], [], []
    for i in range(3):
      buf = io.BytesIO()
      soundfile.write(buf, tone(1.0 + 0.1 * i, 48000), 48000, format="FLAC")
      audios.append({"bytes": buf.getvalue(), "path": f"{split}_{i}.flac"})
      sentences.append(f"Hola número {i}.")
      locales.append("es")
    audios.append({"bytes": b"not audio", "path": "bad.flac"})
    sentences.append("Roto.")
    locales.append("es")
    table = pa.table({"audio": audios, "sentence": sentences, "locale": locales})
    os.makedirs(os.path.join(root, "es"), exist_ok=True)
    pq.write_table(table, os.path.join(root, "es", f"{split}-00000-of-00001.parquet"), row_group_size=2)
  return root


WRITERS = {"fleurs": fleurs, "common_voice": common_voice, "mls": mls, "voxpopuli": voxpopuli, "babel": babel,
           "mc4": mc4, "covost2": covost2, "minds14": minds14, "hf_parquet": hf_parquet}


def prepare_trees(tmp_path_factory, names) -> dict:
  """{name: a prepared directory} of each corpus' tree (`mslam data prepare`, two records a shard)."""
  from mslam_jax.data.corpora import prepare  # pylint: disable=g-import-not-at-top
  out = {}
  for name in names:
    root = WRITERS[name](str(tmp_path_factory.mktemp(f"{name}_src")))
    out[name] = str(tmp_path_factory.mktemp(name))
    prepare.prepare(name, root, out[name], shard_size=2)
  return out
