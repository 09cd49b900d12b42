"""The package's layers, checked on the source.

swoolish is built in five ranks: ``core`` (pure: no asyncio, sockets, processes or clock
reads) < ``shared`` < ``worker`` and ``master`` (two sides that never import each other)
< ``loader``, ``launch``, ``server`` < ``cli``, ``__main__`` and the package itself. A
module imports only from its own rank or a lower one, and imports among swoolish modules
form no cycle.

Every module is parsed with ``ast``, never imported, and every import counts: at module
level, inside a function, under ``if TYPE_CHECKING:`` (each is still a dependency).
Each check is a small pure function, shown below on a tiny synthetic package to catch
what it must.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "swoolish"

#: Rank of each module prefix (the table of the module docstring). ``swoolish`` itself
#: is only the package ``__init__``: a new top-level module has no rank until placed here.
LAYERS: dict[str, int] = {
    "swoolish.core": 0,
    "swoolish.shared": 1,
    "swoolish.worker": 2,
    "swoolish.master": 2,
    "swoolish.loader": 3,
    "swoolish.launch": 3,
    "swoolish.server": 3,
    "swoolish.cli": 4,
    "swoolish.__main__": 4,
    "swoolish": 4,
}
SIDES = ("swoolish.worker", "swoolish.master")
#: What ``core`` must never import: I/O, processes, threads, signals, the clock.
IMPURE = frozenset(
    {
        "asyncio",
        "socket",
        "selectors",
        "select",
        "signal",
        "subprocess",
        "threading",
        "multiprocessing",
        "mmap",
        "time",
        "uvloop",
        "psutil",
        "httptools",
    }
)


class Import(NamedTuple):
    source: str  # the importing module
    target: str  # the imported module, absolute (a package means its __init__)
    path: str  # the importing file, relative to the repository
    line: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.source} imports {self.target}"


# -- collecting ---------------------------------------------------------------------------


def imports_in(
    source: str, module: str, *, is_package: bool, modules: Collection[str], path: str
) -> list[Import]:
    """Every import statement of one module, anywhere in it, with relative ones made absolute.

    ``from X import name`` imports ``X.name`` when that is a module, else ``X``.
    """
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, path, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # level 1 is the package itself, each further dot its parent
                parts = package.split(".")
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                target = candidate if candidate in modules else base
                found.append(Import(module, target, path, node.lineno))
    return sorted(set(found), key=lambda imp: (imp.line, imp.target))  # one per name imported


@functools.cache
def scan() -> tuple[dict[str, str], tuple[Import, ...]]:
    """The package's modules (name -> file) and all their imports."""
    files = {}
    for file in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        is_package = parts[-1] == "__init__"
        files[".".join(parts[:-1] if is_package else parts)] = (file, is_package)
    imports: list[Import] = []
    for module, (file, is_package) in files.items():
        path = str(file.relative_to(ROOT))
        imports += imports_in(
            file.read_text(), module, is_package=is_package, modules=files, path=path
        )
    return {m: str(f.relative_to(ROOT)) for m, (f, _) in files.items()}, tuple(imports)


# -- the checks (pure) --------------------------------------------------------------------


def rank_of(module: str) -> int | None:
    """The rank of the longest matching prefix; None for a module no layer claims."""
    if module == PACKAGE:
        return LAYERS[PACKAGE]
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if prefix != PACKAGE and (module == prefix or module.startswith(prefix + ".")):
            return LAYERS[prefix]
    return None


def side_of(module: str) -> str | None:
    return next((s for s in SIDES if module == s or module.startswith(s + ".")), None)


def unranked(modules: Iterable[str]) -> list[str]:
    return [m for m in modules if rank_of(m) is None]


def upward_imports(imports: Iterable[Import]) -> list[str]:
    """Imports of a higher rank than the importer's own."""
    found = []
    for imp in imports:
        low, high = rank_of(imp.source), rank_of(imp.target)
        if low is not None and high is not None and high > low:
            found.append(f"{imp} (rank {low} imports rank {high})")
    return found


def cross_side_imports(imports: Iterable[Import]) -> list[str]:
    """Imports between ``swoolish.worker`` and ``swoolish.master``, either way."""
    found = []
    for imp in imports:
        sides = side_of(imp.source), side_of(imp.target)
        if None not in sides and sides[0] != sides[1]:
            found.append(str(imp))
    return found


def impure_core_imports(imports: Iterable[Import]) -> list[str]:
    return [
        str(imp)
        for imp in imports
        if rank_of(imp.source) == 0 and imp.target.partition(".")[0] in IMPURE
    ]


def cycles(graph: Mapping[str, Collection[str]]) -> list[list[str]]:
    """Strongly connected components that are cycles (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node) :]
            del stack[stack.index(node) :]
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def import_graph(imports: Iterable[Import], modules: Collection[str]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for imp in imports:
        if imp.target in graph:
            graph[imp.source].add(imp.target)
    return graph


# -- the package --------------------------------------------------------------------------


def report(title: str, offenders: list[str]) -> str:
    return f"{title}:\n  " + "\n  ".join(offenders)


def test_the_scan_sees_the_whole_package() -> None:
    modules, imports = scan()
    assert {"swoolish", "swoolish.core.frames", "swoolish.worker.process"} <= set(modules)
    assert any(imp.target == "swoolish.core.frames" for imp in imports)


def test_every_module_has_a_layer() -> None:
    modules, _ = scan()
    missing = [f"{modules[m]} ({m})" for m in unranked(modules)]
    assert not missing, report(
        "modules no layer claims: place each in LAYERS of tests/unit/test_layers.py "
        "(and its table in the docstring)",
        missing,
    )


def test_no_module_imports_a_higher_layer() -> None:
    _, imports = scan()
    offenders = upward_imports(imports)
    assert not offenders, report("imports of a higher layer", offenders)


def test_worker_and_master_never_import_each_other() -> None:
    _, imports = scan()
    offenders = cross_side_imports(imports)
    assert not offenders, report("imports between the worker and master sides", offenders)


def test_core_imports_no_io_process_or_clock_module() -> None:
    _, imports = scan()
    offenders = impure_core_imports(imports)
    assert not offenders, report("impure imports in swoolish.core", offenders)


def test_the_import_graph_has_no_cycle() -> None:
    modules, imports = scan()
    found = cycles(import_graph(imports, modules))
    lines = []
    for component in found:
        lines.append("cycle among " + ", ".join(component))
        lines += [
            f"  {imp}" for imp in imports if imp.source in component and imp.target in component
        ]
    assert not found, report("import cycles", lines)


# -- the checker on a synthetic package ---------------------------------------------------

SYNTHETIC = {
    "swoolish.shared.x": (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "from . import ipc\n"  # 3: a module
        "from . import missing\n"  # 4: no such module: the package
        "from ..core import frames\n"  # 5
        "if TYPE_CHECKING:\n"
        "    from ..worker.process import Worker\n"  # 7: upward, only for the type checker
        "def later():\n"
        "    import swoolish.master\n"  # 9: upward, inside a function
    ),
    "swoolish.core.frames": "import time\nfrom websockets.frames import Frame\n",
    "swoolish.worker.process": "from ..master import supervisor\n",
    "swoolish.master.supervisor": "from swoolish.worker.process import Worker\n",
}


def synthetic_imports() -> list[Import]:
    modules = {*SYNTHETIC, "swoolish.shared.ipc", "swoolish.shared", "swoolish.master"}
    return [
        imp
        for module, source in SYNTHETIC.items()
        for imp in imports_in(source, module, is_package=False, modules=modules, path=module)
    ]


def test_the_checker_resolves_every_kind_of_import() -> None:
    found = {(imp.line, imp.target) for imp in synthetic_imports() if imp.path.endswith("x")}
    assert {
        (3, "swoolish.shared.ipc"),
        (4, "swoolish.shared"),
        (5, "swoolish.core.frames"),
        (7, "swoolish.worker.process"),
        (9, "swoolish.master"),
    } <= found


def test_the_checker_catches_upward_cross_side_and_impure_imports() -> None:
    imports = synthetic_imports()
    assert [s.split(":")[1] for s in upward_imports(imports)] == ["7", "9"]
    assert len(cross_side_imports(imports)) == 2
    assert impure_core_imports(imports) == [
        "swoolish.core.frames:1: swoolish.core.frames imports time"
    ]
    assert unranked(["swoolish", "swoolish.core.x", "swoolish.newthing"]) == ["swoolish.newthing"]


def test_the_checker_catches_a_cycle_and_passes_a_tree() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"a"}}) == [["a"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
    graph = import_graph(synthetic_imports(), SYNTHETIC)
    assert cycles(graph) == [["swoolish.master.supervisor", "swoolish.worker.process"]]
