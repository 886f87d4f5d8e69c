"""mslam_jax: massively multilingual joint speech-and-text pre-training (mSLAM) in JAX/Flax."""

__version__ = "0.1.0"
