"""The import graph, read statically from the sources: layers import downward only (the Layers
section of DESIGN.md), ``defenses`` never imports ``attacks``, and the library ``obfgrad/`` never
imports ``reproduce/``.

Every ``import``/``from ... import`` statement counts, wherever it stands (a lazy import inside a
function is a dependency too), and so does ``importlib.import_module("literal")``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: DESIGN.md's layers, top to bottom; a module may import its own layer or any layer below it.
#: The shared helpers DESIGN.md does not draw (input checks, atomic writes, the checkpoint cache,
#: code fingerprints, the distances, the package root) sit just above ``_native``: every layer
#: uses them and they use nothing above ``_native``.
LAYERS = (
    ("reproduce",),
    ("obfgrad.cli",),
    ("obfgrad.zoo",),
    ("obfgrad.eval",),
    ("obfgrad.attacks",),
    ("obfgrad.defenses",),
    ("obfgrad.ops",),
    ("obfgrad.models", "obfgrad.data"),
    ("obfgrad", "obfgrad._checks", "obfgrad.atomic", "obfgrad.cache", "obfgrad.fingerprint",
     "obfgrad.distances"),
    ("obfgrad._native",),
    ("obfgrad._C",),  # the compiled kernels (csrc/)
)

def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".") if is_package else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """The modules ``path`` imports: ``from pkg import name`` counts as ``pkg.name`` when that is a
    module (a submodule import), else as ``pkg``."""
    importer, tree = _module_name(path, root), ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(importer, path.name == "__init__.py", node)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                found.add(submodule if _is_module(submodule, root) or submodule == "obfgrad._C" else source)
        elif (isinstance(node, ast.Call)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.add(node.args[0].value)
    return {name for name in found if name.split(".")[0] in ("obfgrad", "reproduce")}


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix naming ``module``'s layer."""
    best, best_len = None, -1
    for index, members in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > best_len:
                best, best_len = index, len(member)
    if best is None:
        raise KeyError(module)
    return best


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """{importing module: modules it imports} for every source file of obfgrad/ and reproduce/."""
    files = sorted((root / "obfgrad").rglob("*.py")) + sorted((root / "reproduce").rglob("*.py"))
    return {_module_name(path, root): imported_modules(path, root) for path in files}


def upward_imports(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(importer, target) for importer, targets in graph.items() for target in targets
            if layer_of(target) < layer_of(importer)}


def test_the_scanner_sees_plain_lazy_relative_and_importlib_imports(tmp_path):
    package = tmp_path / "obfgrad" / "defenses"
    package.mkdir(parents=True)
    (tmp_path / "obfgrad" / "__init__.py").write_text("")
    (tmp_path / "obfgrad" / "attacks.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "sibling.py").write_text("")
    source = package / "probe.py"
    source.write_text("import obfgrad.ops\n"
                      "from . import sibling\n"
                      "from .. import attacks\n"
                      "def later():\n"
                      "    from reproduce.rows import row_spec\n"
                      "    import importlib\n"
                      "    return importlib.import_module('reproduce.spec')\n")
    assert imported_modules(source, tmp_path) == {"obfgrad.ops", "obfgrad.defenses.sibling", "obfgrad.attacks",
                                        "reproduce.rows", "reproduce.spec"}


def test_every_module_has_a_layer():
    graph = import_graph()
    unplaced = sorted(name for name in set(graph) | set().union(*graph.values()) if _layer_or_none(name) is None)
    assert not unplaced, f"place these modules in LAYERS (DESIGN.md's Layers section): {unplaced}"


def _layer_or_none(module: str):
    try:
        return layer_of(module)
    except KeyError:
        return None


def test_defenses_do_not_import_attacks():
    graph = import_graph()
    offenders = sorted((importer, target) for importer, targets in graph.items()
                       if importer.startswith("obfgrad.defenses") for target in targets
                       if target == "obfgrad.attacks" or target.startswith("obfgrad.attacks."))
    assert not offenders, f"defenses import attacks (BPDA lives in obfgrad.ops.bpda): {offenders}"


def test_the_library_does_not_import_reproduce():
    graph = import_graph()
    offenders = {(importer, target) for importer, targets in graph.items() if importer.split(".")[0] == "obfgrad"
                 for target in targets if target.split(".")[0] == "reproduce"}
    assert sorted(offenders) == []


def test_layers_import_downward_only():
    upward = upward_imports(import_graph())
    assert sorted(upward) == [], "an import points up the layers of DESIGN.md"


def _module_classes_and_exports(path: Path) -> tuple[list[str], list[str]]:
    """(names of the classes a module defines, the names in its literal __all__)."""
    tree = ast.parse(path.read_text())
    classes = [node.name for node in tree.body if isinstance(node, ast.ClassDef)]
    exports: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            exports = [e.value for e in getattr(node.value, "elts", []) if isinstance(e, ast.Constant)]
    return classes, exports


#: Modules still named like a function they export (``from obfgrad.eval import diagnose`` is the
#: function, ``obfgrad.eval.diagnose`` the module); the ops were renamed <op>_op for this.
KNOWN_NAME_CLASHES = {"obfgrad.eval.diagnose"}


def test_no_module_shares_its_name_with_what_it_exports():
    clashes = set()
    for path in sorted((ROOT / "obfgrad").rglob("*.py")):
        name = path.parent.name if path.name == "__init__.py" else path.stem
        if name in _module_classes_and_exports(path)[1]:
            clashes.add(_module_name(path, ROOT))
    assert sorted(clashes - KNOWN_NAME_CLASHES) == []
    assert sorted(KNOWN_NAME_CLASHES - clashes) == [], "renamed: drop it from KNOWN_NAME_CLASHES"


def test_op_modules_export_functions_and_the_defenses_hold_their_modules():
    # One nn.Module per op, in obfgrad.defenses (JPEGCompression, TVMinimization, ImageQuilting,
    # Thermometer): an op module defines no classes but its own exceptions.
    for path in sorted((ROOT / "obfgrad" / "ops").glob("*_op.py")):
        classes = [name for name in _module_classes_and_exports(path)[0] if not name.endswith("Error")]
        assert classes == [], f"{path.name}: {classes}"
