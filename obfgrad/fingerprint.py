"""Fingerprints of the code that computes a result: what a cached checkpoint or row result must
match to be reused.

* :func:`module_closure` follows ``import`` statements (statically, by reading the source, never
  by importing) from some root modules of the ``obfgrad`` package to every ``obfgrad`` module they
  can reach: the code that can run when the roots run.
* :func:`sources_digest` is the SHA-256 of those modules' source files (names and bytes).
* :func:`native_digest` is the SHA-256 of the compiled extension ``obfgrad._C`` that is loaded
  (``"none"`` when the pure-torch fallback runs) and of the CUDA kernel sources compiled at run
  time (``csrc/include``, ``csrc/cuda``): native code computes as much as the Python around it.
* :func:`files_digest` hashes files a caller names (e.g. the runner's own modules).

File digests are memoised per (path, size, modification time), so fingerprinting the same tree
again costs one ``stat`` per file.
"""

from __future__ import annotations

import ast
import hashlib
import os
from pathlib import Path
from typing import Dict, Iterable, List, Tuple

__all__ = ["PACKAGE_DIR", "module_closure", "module_path", "sources_digest", "native_digest", "files_digest",
           "file_sha256"]

PACKAGE_DIR = Path(__file__).resolve().parent
_PACKAGE = "obfgrad"
_FILE_DIGESTS: Dict[Tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes (memoised per path, size and modification time)."""
    stat = os.stat(path)
    memo = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _FILE_DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _FILE_DIGESTS[memo] = digest.hexdigest()
    return _FILE_DIGESTS[memo]


def module_path(name: str) -> Path:
    """The source file of an ``obfgrad`` module or package (``__init__.py``), without importing it."""
    if name != _PACKAGE and not name.startswith(_PACKAGE + "."):
        raise ValueError(f"name: expected a module of the {_PACKAGE} package, got {name!r}")
    base = PACKAGE_DIR.joinpath(*name.split(".")[1:])
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    raise ValueError(f"name: no source file for module {name!r} under {PACKAGE_DIR}")


def _exists(name: str) -> bool:
    try:
        module_path(name)
    except ValueError:
        return False
    return True


def _imported_modules(name: str) -> List[str]:
    """The ``obfgrad`` modules a module's source imports (``import a.b``, ``from a.b import c``:
    ``a.b``, and ``a.b.c`` when ``c`` is a submodule; relative imports resolved)."""
    path = module_path(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names]
    return [module for module in found
            if (module == _PACKAGE or module.startswith(_PACKAGE + ".")) and _exists(module)]


def module_closure(roots: Iterable[str]) -> List[str]:
    """Every ``obfgrad`` module reachable from ``roots`` through import statements, sorted.

    Example:
        >>> "obfgrad._checks" in module_closure(["obfgrad.attacks.pgd"])
        True
    """
    seen, todo = set(), list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(_imported_modules(name))
    return sorted(seen)


def sources_digest(modules: Iterable[str]) -> str:
    """SHA-256 over the sorted modules' names and source-file digests."""
    digest = hashlib.sha256()
    for name in sorted(set(modules)):
        digest.update(f"{name}\0{file_sha256(module_path(name))}\n".encode())
    return digest.hexdigest()


def files_digest(paths: Iterable[Path]) -> str:
    """SHA-256 over the contents of files a caller names (their sorted digests: independent of
    where the checkout lies and of the order given)."""
    digests = sorted(file_sha256(Path(path)) for path in paths)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def native_digest() -> str:
    """SHA-256 of the loaded ``obfgrad._C`` binary (``none`` without one) and of the CUDA kernel
    sources, when present."""
    from obfgrad import _native

    module, _ = _native._load_extension()
    binary = getattr(module, "__file__", None) if module is not None else None
    digest = hashlib.sha256(f"_C\0{file_sha256(Path(binary)) if binary else 'none'}\n".encode())
    try:
        kernels = _native.kernel_source_dir()
    except FileNotFoundError:
        return digest.hexdigest()
    sources = sorted(p for sub in ("include", "cuda") for p in (kernels / sub).rglob("*") if p.is_file())
    digest.update(files_digest(sources).encode())
    return digest.hexdigest()
