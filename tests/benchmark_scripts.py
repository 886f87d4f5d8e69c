"""The scripts under benchmarks/ as modules: they are commands, not a package, so tests load them
from their files."""
import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str):
  """benchmarks/<name>.py, loaded as a module named <name>."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "benchmarks", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
