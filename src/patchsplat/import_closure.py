"""The patchsplat modules a file imports, transitively, found statically with :mod:`ast`.

Every ``import`` / ``from ... import`` anywhere in a file (also inside functions and ``if TYPE_CHECKING:``),
restricted to the patchsplat package, with the ``__init__.py`` of every package on the way. It imports no
patchsplat module itself, so code that fingerprints its own source (the training loop's checkpoints) depends on
this file alone; :mod:`patchsplat.pipeline_deps` builds each DVC stage's code dependencies from it.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = "patchsplat"
NATIVE_SOURCES = "*.cpp"  # C++ a package compiles at run time (render/native) is its code too


def _module_file(package: Path, module: str) -> Path | None:
    parts = module.split(".")[1:]
    base = package.joinpath(*parts)
    if (base / "__init__.py").is_file():
        return base / "__init__.py"
    if parts and base.with_suffix(".py").is_file():
        return base.with_suffix(".py")
    return None


def _imported_names(path: Path, module: str | None, is_package: bool) -> set[str]:
    """The patchsplat names ``path`` imports: modules, and ``module.name`` candidates for ``from module import name``."""
    stat = path.stat()
    return set(_parsed_imports(str(path), stat.st_mtime_ns, stat.st_size, module, is_package))


@functools.lru_cache(maxsize=4096)
def _parsed_imports(path: str, _mtime_ns: int, _size: int, module: str | None, is_package: bool) -> frozenset[str]:
    tree = ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if module is None:
                    continue
                parts = module.split(".") if is_package else module.split(".")[:-1]
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return frozenset(name for name in names if name == PACKAGE or name.startswith(PACKAGE + "."))


def module_closure(script: Path, package: Path) -> set[str]:
    """The files (relative to ``package``, posix) of every patchsplat module ``script`` imports, transitively."""
    files: set[str] = set()
    seen: set[str] = set()
    queue = sorted(_imported_names(script, None, False))
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        path = _module_file(package, module)
        if path is None:  # an attribute (`from patchsplat.config import load_params`), not a module
            continue
        files.add(path.relative_to(package).as_posix())
        if path.name == "__init__.py":  # C++ a package compiles at run time is its code too (render/native)
            files.update(source.relative_to(package).as_posix() for source in path.parent.glob(NATIVE_SOURCES))
        parts = module.split(".")
        queue.extend(".".join(parts[:end]) for end in range(1, len(parts)))  # the packages on the way
        queue.extend(_imported_names(path, module, path.name == "__init__.py"))
    return files
