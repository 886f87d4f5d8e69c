"""The library's import structure, read from the source (ast): nothing in mslam_jax/ imports a
command or entry-point module, and no modules import each other in a cycle (imports inside
functions count: a lazy import is still a dependency)."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE_DIR = os.path.join(REPO, "mslam_jax")
# Directories installed inside the package (setup.py's package_dir).
MAPPED = {"mslam_jax.tasks": os.path.join(REPO, "tasks")}
ENTRY_POINTS = {"mslam_jax.cli", "mslam_jax.__main__"}
COMMANDS_PACKAGE = "mslam_jax.commands"
COMMAND_HELPERS = {"mslam_jax.commands", "mslam_jax.commands.common"}


def _modules(package_dir: str = PACKAGE_DIR, mapped=None) -> dict[str, str]:
  out = {}
  for prefix, top in [("mslam_jax", package_dir)] + list((MAPPED if mapped is None else mapped).items()):
    for root, _, files in os.walk(top):
      for name in files:
        if name.endswith(".py"):
          rel = os.path.relpath(os.path.join(root, name), top)[:-3].replace(os.sep, ".")
          module = prefix if rel == "__init__" else f"{prefix}.{rel[:-len('.__init__')] if rel.endswith('.__init__') else rel}"
          out[module] = os.path.join(root, name)
  return out


def _imports(module: str, path: str, known: set[str]) -> set[str]:
  """The mslam_jax modules `module` imports (a `from package import name` counts as the
  submodule when `name` is one)."""
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read())
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
    else:
      continue
    for name in names:
      while name and name not in known:
        name = name.rpartition(".")[0]
      if name and name != module and name != "mslam_jax":
        found.add(name)
  return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
  modules = _modules()
  return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def test_the_parser_sees_the_known_edges(graph):
  assert "mslam_jax.checkpoints" in graph["mslam_jax.evaluation.sweep"]
  assert "mslam_jax.commands.common" in graph["mslam_jax.commands.eval"]


def test_nothing_imports_a_command_or_an_entry_point(graph):
  commands = {m for m in graph if m.startswith(COMMANDS_PACKAGE + ".") and m not in COMMAND_HELPERS}
  assert commands, "no command modules found"
  bad = sorted(f"{m} imports {d}" for m, deps in graph.items() for d in deps
               if d in commands | ENTRY_POINTS and m not in ENTRY_POINTS)
  assert not bad, bad
  # The library does not reach into the commands' helpers either.
  library = [m for m in graph if not m.startswith(COMMANDS_PACKAGE) and m not in ENTRY_POINTS]
  bad = sorted(f"{m} imports {d}" for m in library for d in graph[m] if d.startswith(COMMANDS_PACKAGE))
  assert not bad, bad


def test_no_import_cycles(graph):
  cycles, state, stack = [], {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        cycles.append(stack[stack.index(dep):] + [dep])
      elif dep not in state:
        visit(dep)
    stack.pop()
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node)
  assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_the_model_and_the_step_import_no_data_pipeline():
  """An accelerator job or benchmark that trains on prepared batches needs JAX, Flax, Optax and
  gin alone: the model, the losses and the Trainer import no SeqIO or TensorFlow."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ("import sys\n"
          "from mslam_jax import config, optimizers, partitioning, trainer\n"
          "from mslam_jax.models import encoder, losses, mslam, translation\n"
          "print(sorted({m.split('.')[0] for m in sys.modules} & {'seqio', 'tensorflow', 'tensorflow_datasets'}))\n")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
  assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout
