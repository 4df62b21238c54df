"""The packages' import graph: one way only, no circle, every module importable alone.

``fastagi_server -> dialplan -> crmlookup`` is the architecture; a circle inside a
package (even one closed by an import inside a function) means two modules can
only be understood together, and a module that imports only after another one
did hides an order a newcomer cannot see.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crmlookup", "dialplan", "fastagi_server")
# Which package may import which: each only those below it.
MAY_IMPORT = {"crmlookup": {"crmlookup"}, "dialplan": {"dialplan", "crmlookup"}, "fastagi_server": set(PACKAGES)}


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


class _Imports(ast.NodeVisitor):
    """The project modules one module imports, at its top or inside functions
    (imports only a type checker sees, under ``if TYPE_CHECKING:``, are left out)."""

    def __init__(self, module: str, modules: dict[str, Path]):
        self.module = module
        self.modules = modules
        self.found: set[str] = set()

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
            for statement in node.orelse:
                self.visit(statement)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self.module.split(".")
            if self.modules[self.module].name != "__init__.py":
                package.pop()
            package = package[: len(package) - (node.level - 1)]
            target = ".".join(package + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        for alias in node.names:
            self._add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in self.modules else target)

    def _add(self, target: str) -> None:
        while target and target not in self.modules:
            target = target.rpartition(".")[0]
        if target and target != self.module:
            self.found.add(target)


def import_graph() -> dict[str, set[str]]:
    modules = module_files()
    graph = {}
    for module, path in modules.items():
        visitor = _Imports(module, modules)
        visitor.visit(ast.parse(path.read_text(encoding="utf-8")))
        graph[module] = visitor.found
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph[module]:
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                group.append(other)
                if other == module:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in graph:
        if module not in index:
            visit(module)
    return found


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the packages
    assert circles(graph) == []


def test_the_circle_finder_finds_a_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_packages_depend_one_way():
    wrong = [
        f"{module} imports {other}"
        for module, imports in import_graph().items()
        for other in imports
        if other.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]
    ]
    assert wrong == []


IMPORT_EACH_ALONE = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("crmlookup", "dialplan", "fastagi_server")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ": " + traceback.format_exc(limit=-3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


def test_each_module_imports_alone():
    """Each module imported first, with none of the project's modules loaded before it."""
    names = sorted(n for n in module_files() if not n.endswith("__main__"))
    done = subprocess.run([sys.executable, "-c", IMPORT_EACH_ALONE, *names], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_package_folder_is_a_regular_package():
    """A folder of modules without ``__init__.py`` imports from a checkout (a namespace
    package) but is left out of an installed copy (``packages = find:``)."""
    folders = {path.parent for path in module_files().values()}
    assert sorted(str(f.relative_to(ROOT)) for f in folders if not (f / "__init__.py").exists()) == []
