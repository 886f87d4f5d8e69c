"""`python -m mslam_jax COMMAND ...`: the same as `mslam COMMAND ...` (e.g. where no console script
was installed)."""
from mslam_jax import cli

if __name__ == "__main__":
  cli.entry()
