"""SeqIO Task and Mixture registrations, installed as mslam_jax.tasks."""
