"""The package's imports keep the floors that docs/ARCHITECTURE.md records (read from there).

Walks every import statement of every module of ``scratchvae`` with ``ast`` (those inside
functions too, so a lazy import counts) and fails on: an import of a higher floor, a cycle,
a module the table does not place, matplotlib outside the plotting code, CuPy or Numba
outside ``scratchvae/backend``, and mpi4py (or threadpoolctl, which sets the ranks' BLAS
threads) outside ``scratchvae.comm``.
"""

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "scratchvae"
DEVICE_LIBS = ("cupy", "cupyx", "numba", "llvmlite")
RANK_LIBS = ("mpi4py", "threadpoolctl")


def floor_table():
    """{name: floor} from the ``floor N  names | ...`` lines of docs/ARCHITECTURE.md."""
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    table = {}
    for number, names in re.findall(r"^floor (\d+)\s+([^|\n]*)", text, flags=re.M):
        for name in names.split():
            table[name] = int(number)
    return table


def modules():
    """{dotted module name: path} of the package (a package's __init__ is the package)."""
    out = {}
    for path in PKG.rglob("*.py"):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name, path, known):
    """Every (module imported, top-level package name) of module ``name``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                yield f"{base}.{a.name}" if f"{base}.{a.name}" in known else base


def floor_of(module, table):
    """The floor of a ``scratchvae`` module: its own entry or its package's."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        key = ".".join(parts[1:i]) if i > 1 else "scratchvae"
        if key in table:
            return table[key]
    return None


def owner(target, known):
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def edges_and_problems():
    table, known = floor_table(), modules()
    edges, problems = {}, []
    for name, path in sorted(known.items()):
        mine = floor_of(name, table)
        if mine is None:
            problems.append(f"{name} is on no floor of docs/ARCHITECTURE.md")
        for target in imports(name, path, known):
            top = target.split(".")[0]
            if top in DEVICE_LIBS and not name.startswith("scratchvae.backend"):
                problems.append(f"{name} imports {target} (only scratchvae/backend may)")
            if top in RANK_LIBS and name != "scratchvae.comm":
                problems.append(f"{name} imports {target} (only scratchvae.comm may)")
            if top == "matplotlib" and name != "scratchvae.plots" and not name.startswith("scratchvae.plots."):
                problems.append(f"{name} imports {target} (only the package scratchvae.plots may)")
            if top != "scratchvae":
                continue
            target = owner(target, known)
            if target == name:
                continue
            edges.setdefault(name, set()).add(target)
            theirs = floor_of(target, table)
            if mine is not None and theirs is not None and theirs > mine:
                problems.append(f"{name} (floor {mine}) imports {target} (floor {theirs})")
    return edges, problems


def cycles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def test_the_table_places_every_module_on_a_floor():
    table = floor_table()
    assert len(set(table.values())) >= 8, table
    assert table["backend"] < table["ops"] < table["model"] < table["step"] < table["train"] < table["cli"]


def test_imports_keep_the_floors():
    edges, problems = edges_and_problems()
    assert len(edges) > 20                      # the walk found the package's imports
    assert not problems, "\n".join(problems)


def test_no_import_cycles():
    edges, _ = edges_and_problems()
    assert not cycles(edges), cycles(edges)


@pytest.mark.parametrize("bad", [
    ("scratchvae.backend.graph", "from ..ops.gaussian import LOGVAR_LIMIT\n", "imports scratchvae.ops"),
    ("scratchvae.model", "import cupy\n", "only scratchvae/backend may"),
    ("scratchvae.evaluate", "def f():\n    import matplotlib.pyplot\n", "only the package scratchvae.plots may"),
    ("scratchvae.train", "def f():\n    from mpi4py import MPI\n", "only scratchvae.comm may"),
])
def test_the_walk_catches_a_violation(bad, monkeypatch):
    """An upward import, cupy in the model, a lazy matplotlib import and mpi4py in the training loop
    are each caught."""
    name, line, message = bad
    path = modules()[name]
    real = Path.read_text

    def read_text(self, *a, **kw):
        return real(self, *a, **kw) + ("\n" + line if self == path else "")

    monkeypatch.setattr(Path, "read_text", read_text)
    _, problems = edges_and_problems()
    assert any(message in p for p in problems), problems


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
