"""Interoperability with other implementations: weights and configs in and out.

hf_w2vbert: transformers' Wav2Vec2BertModel (Meta's w2v-BERT 2.0) <-> our speech encoder
(`mslam convert from-hf` / `mslam convert to-hf`, mslam_jax/commands/convert.py).
"""
