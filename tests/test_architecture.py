"""The package's layering: modules import only downward, and light entry points stay light."""

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).parent.parent / "rap_flax"

# (module prefix, group); a module may import its own group or any group of a lower rank.
# models and data are siblings (neither imports the other), as are training and export.
GROUPS = {"base": 0, "layers": 1, "models": 2, "data": 2, "weights": 3, "training": 4,
          "export": 4, "entry": 5}
LAYERS = [
    ("rap_flax.spec", "base"), ("rap_flax.files", "base"), ("rap_flax.errors", "base"),
    ("rap_flax.config_fields", "base"), ("rap_flax.locks", "base"),
    ("rap_flax.platforms", "base"), ("rap_flax.hlo", "base"),
    ("rap_flax.layers", "layers"), ("rap_flax.pytorch.layers", "layers"),
    ("rap_flax.pytorch.gates", "layers"),
    ("rap_flax.models", "models"), ("rap_flax.pytorch.models", "models"),
    ("rap_flax.pytorch", "models"),
    ("rap_flax.data.prepare", "entry"), ("rap_flax.data", "data"),
    ("rap_flax.weights", "weights"),
    ("rap_flax.training", "training"),
    ("rap_flax.pytorch.onnx_export", "export"), ("rap_flax.pytorch.quantize", "export"),
    ("rap_flax.cli", "entry"), ("rap_flax.convert", "entry"), ("rap_flax.aot", "entry"),
    ("rap_flax", "entry"),
]


def group_of(module: str) -> str:
  for prefix, group in sorted(LAYERS, key=lambda layer: -len(layer[0])):  # most specific first
    if module == prefix or module.startswith(prefix + "."):
      return group
  raise AssertionError(f"{module} is in no layer; add it to LAYERS")


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: pathlib.Path) -> bool:
  path = root / name.replace(".", "/")
  return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def package_imports(path: pathlib.Path, root: pathlib.Path = PACKAGE.parent) -> set[str]:
  """Every rap_flax module `path` imports, at the top or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from rap_flax import data` imports the module rap_flax.data;
      # `from rap_flax.data import DATASETS` imports rap_flax.data.
      submodules = {f"{node.module}.{alias.name}" for alias in node.names
                    if _is_module(f"{node.module}.{alias.name}", root)}
      found.update(submodules or {node.module})
  return {name for name in found if name.split(".")[0] == "rap_flax"}


def test_every_module_imports_only_downward():
  violations = []
  for path in sorted(PACKAGE.rglob("*.py")):
    importer = module_name(path)
    mine = group_of(importer)
    for imported in sorted(package_imports(path)):
      theirs = group_of(imported)
      if theirs != mine and GROUPS[theirs] >= GROUPS[mine]:
        violations.append(f"{importer} ({mine}) imports {imported} ({theirs})")
  assert not violations, "\n".join(violations)


def test_the_layer_check_catches_an_upward_import(tmp_path):
  upward = tmp_path / "rap_flax" / "weights" / "x.py"
  upward.parent.mkdir(parents=True)
  upward.write_text("def f():\n  from rap_flax.training import train_lib\n")
  assert package_imports(upward) == {"rap_flax.training.train_lib"}
  assert GROUPS[group_of("rap_flax.training.train_lib")] > GROUPS[group_of("rap_flax.weights.x")]


@pytest.mark.parametrize("module", ["rap_flax.data.prepare", "rap_flax.weights", "rap_flax.cli"])
def test_light_modules_load_neither_training_nor_torch(module):
  check = (f"import sys, {module}; "
           "heavy = [m for m in ('rap_flax.training', 'torch', 'tensorflow') if m in sys.modules]; "
           "assert not heavy, heavy")
  result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                          cwd=PACKAGE.parent, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
