"""What changed in a run's gin config since its last start, for a resume to act on.

A resumed run compares its operative config with the one the run directory holds from its last
start: optimizer settings that changed are allowed but warned about (old and new values named); a
change that makes the checkpoint unusable (a parameter shape, the data order) is refused elsewhere
(checkpoints.Checkpointer, the data iterator's set_state) and the message names the bindings that
changed here. Settings that only steer the loop (steps, logging, checkpoint cadence) pass silently.
"""
import logging
import re

from etils import epath

OPERATIVE_CONFIG = "operative_config.gin"  # config.OPERATIVE_CONFIG (config imports checkpoints, which reads this)

# Bindings a resumed run may change without comment: they steer the loop, not what it computes.
LOOP_ONLY = re.compile(
    r"^(MODEL_DIR|TRAIN_STEPS|train\.(train_steps|model_dir|log_every|checkpoint_every|keep_checkpoints|"
    r"async_checkpoints|progress_bar|tensorboard|eval_every|evaluators|health_every|health_params|"
    r"collapse_cosine|max_consecutive_nonfinite)|initialize_distributed\..*|.*\.progress|.*\.log_every)$")
# Optimizer settings: a change is legal (e.g. a lower peak after a spike) but worth a warning.
OPTIMIZER = re.compile(r"^(.*/)?(make_optimizer|transformer_schedule)\.")
_BINDING = re.compile(r"^([A-Za-z_][\w./]*)\s*=\s*(.*)$")


def read_operative_config(model_dir: str) -> str | None:
  path = epath.Path(model_dir) / OPERATIVE_CONFIG  # local or remote (gs://...)
  return path.read_text(encoding="utf-8") if path.exists() else None


def bindings(text: str) -> dict[str, str]:
  """{name: value text} of an operative config (macros and parameters; continuation lines joined)."""
  out: dict[str, str] = {}
  name = None
  for line in text.splitlines():
    if not line.strip() or line.lstrip().startswith("#") or line.startswith(("import ", "from ")):
      name = None if not line.startswith((" ", "\t")) else name
      continue
    if line.startswith((" ", "\t")) and name is not None:
      out[name] += " " + line.strip()
      continue
    match = _BINDING.match(line)
    name = match.group(1) if match else None
    if match:
      out[name] = match.group(2).strip()
  return out


def changes(old_text: str | None, new_text: str) -> dict[str, tuple[str | None, str | None]]:
  """{binding: (old, new)} of bindings whose value differs, loop-only settings left out."""
  if old_text is None:
    return {}
  old, new = bindings(old_text), bindings(new_text)
  return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not LOOP_ONLY.match(k)}


def describe(diff: dict[str, tuple[str | None, str | None]]) -> str:
  return "; ".join(f"{k}: {'(unset)' if a is None else a} -> {'(unset)' if b is None else b}"
                   for k, (a, b) in diff.items())


def warn_about(diff: dict[str, tuple[str | None, str | None]], step: int) -> None:
  """Logs the optimizer changes as a warning and the rest as information."""
  optimizer = {k: v for k, v in diff.items() if OPTIMIZER.match(k)}
  if optimizer:
    logging.warning("Resuming at step %d with changed optimizer settings (the optimizer state of the "
                    "checkpoint is kept): %s", step, describe(optimizer))
  others = {k: v for k, v in diff.items() if k not in optimizer}
  if others:
    logging.warning("Resuming at step %d with a changed config: %s", step, describe(others))
