"""Gin configs, installed as mslam_jax.gin_configs so that a pip-installed package finds them."""
