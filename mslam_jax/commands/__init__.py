"""`mslam` sub-commands: one leaf module per command (`add_arguments(parser)`, `run(args) -> int`).

Nothing imports a command module but mslam_jax/cli.py, which imports only the one that runs and
turns the library's errors (ValueError, FileNotFoundError, ...) into a one-line message and exit
code 2. `common.py` holds what the commands share (the flag vocabulary, logging, JSON output).
"""
