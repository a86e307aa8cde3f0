"""The package's import structure: one-way dependencies and no import cycles.

Imports are read with `ast`, including those inside functions, since a deferred import still
ties two modules together.
"""

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vit_jax"


def module_names() -> dict[str, Path]:
  names = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
  return names


MODULES = module_names()


def imports_of(name: str) -> set[str]:
  """The package's modules that module `name` imports, anywhere in its body."""
  path = MODULES[name]
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative: from the package, up level - 1 packages
        anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{anchor}.{base}" if base else anchor
      for alias in node.names:
        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
  return {m for m in found if m in MODULES and m != name and m != "vit_jax"}


GRAPH = {name: imports_of(name) for name in MODULES}


def test_the_walk_sees_imports_at_module_level_and_inside_functions():
  assert "vit_jax.models.registry" in GRAPH["vit_jax.train.loop"]
  assert "vit_jax.data.tfds_source" in GRAPH["vit_jax.data.pipeline"]  # imported in load()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_imports(name):
  importlib.import_module(name)


def test_models_import_nothing_from_training_data_evaluation_or_configs():
  forbidden = ("vit_jax.train", "vit_jax.data", "vit_jax.evaluate", "configs")
  for name, deps in GRAPH.items():
    if name.startswith("vit_jax.models"):
      assert not [d for d in deps if d.startswith(forbidden)], name
      source = MODULES[name].read_text()
      assert "from configs" not in source and "import configs" not in source, name


def test_io_does_not_import_the_trainer():
  for name, deps in GRAPH.items():
    if name.startswith("vit_jax.io"):
      assert not [d for d in deps if d.startswith("vit_jax.train")], name


def test_no_import_cycles():
  state: dict[str, str] = {}  # "open" while on the current path, "done" after
  cycles = []

  def visit(name: str, path: list[str]) -> None:
    state[name] = "open"
    for dep in sorted(GRAPH[name]):
      if state.get(dep) == "open":
        cycles.append(path[path.index(dep):] + [dep])
      elif dep not in state:
        visit(dep, [*path, dep])
    state[name] = "done"

  for name in sorted(GRAPH):
    if name not in state:
      visit(name, [name])
  assert not cycles, " ; ".join(" -> ".join(c) for c in cycles)
