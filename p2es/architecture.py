"""The layers of p2es and what each may import: the one definition that the layer test
(tests/test_layers.py) enforces and scripts/architecture.py draws.

A module belongs to the layer whose longest listed prefix matches its name.  It may import
modules of the layers named in ``may_import`` and of its own *unit* (the listed prefix it
matched); the units of one layer are independent of each other (``ingest`` does not import
``alerts``).  Standard-library and third-party imports are not restricted here.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Layer", "LAYERS", "PACKAGES", "layer_of", "unit_of", "import_graph", "violations", "cycles"]

#: the top-level packages of the distribution
PACKAGES: tuple[str, ...] = ("p2es", "engine", "ingest", "sink", "alerts", "dashboards", "wearable")


@dataclass(frozen=True)
class Layer:
    name: str
    units: tuple[str, ...]
    may_import: tuple[str, ...]
    description: str
    independent: bool = True  # units of this layer may not import each other


LAYERS: tuple[Layer, ...] = (
    Layer(
        "application",
        ("p2es.cli", "engine.app", "alerts.cli", "dashboards.cli", "wearable.cli"),
        ("application", "services", "model", "data", "transport", "contracts", "core"),
        "composition roots: pipeline wiring, demo, bench, metrics endpoint, every CLI command",
        independent=False,
    ),
    Layer(
        "services",
        ("ingest", "engine.serve", "alerts", "dashboards", "wearable.publisher"),
        ("model", "data", "transport", "contracts", "core"),
        "ingest streams, runtime + backends + export, alert service, dashboards, simulator publisher",
    ),
    Layer(
        "model",
        ("engine.model",),
        ("data", "contracts", "core"),
        "pure ML: configs, blur schedule, network, groups, sampler, checkpoint, training, evaluation",
    ),
    Layer(
        "data",
        ("wearable.sim", "wearable.readers"),
        ("contracts", "core"),
        "data sources: the physiological simulator and the file readers",
    ),
    Layer(
        "transport",
        ("p2es.transport", "sink"),
        ("contracts", "core"),
        "MQTT connection helper, service settings, InfluxDB writer and spool",
        independent=False,
    ),
    Layer(
        "contracts",
        ("p2es.contracts",),
        ("core",),
        "one pydantic model per message, topic builders, InfluxDB schemas",
    ),
    Layer(
        "core",
        (
            "p2es",
            "engine",
            "wearable",
            "p2es.errors",
            "p2es.leads",
            "p2es.signal",
            "p2es.plot",
            "p2es.argtypes",
            "p2es.files",
            "p2es.architecture",
        ),
        ("core",),
        "errors, leads, signal measurement, plotting, argument types, atomic files",
        independent=False,
    ),
)

_BY_NAME = {layer.name: layer for layer in LAYERS}
_UNITS = sorted(((u, layer) for layer in LAYERS for u in layer.units), key=lambda x: -len(x[0]))


def unit_of(module: str) -> tuple[str, Layer] | None:
    """(matched unit, layer) of a first-party module, or None for other modules."""
    for unit, layer in _UNITS:
        if module == unit or module.startswith(unit + "."):
            return unit, layer
    return None


def layer_of(module: str) -> str | None:
    u = unit_of(module)
    return None if u is None else u[1].name


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    line: int
    in_function: bool


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(tree: ast.AST, module: str, is_pkg: bool) -> Iterator[tuple[str, int, bool]]:
    def visit(node: ast.AST, in_func: bool) -> Iterator[tuple[str, int, bool]]:
        for child in ast.iter_child_nodes(node):
            f = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield a.name, child.lineno, in_func
            elif isinstance(child, ast.ImportFrom):
                if child.level:  # relative: resolve against this module's package
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for a in child.names:  # `from pkg import sub` may name a submodule
                    yield f"{target}\0{a.name}", child.lineno, in_func
            else:
                yield from visit(child, f)

    yield from visit(tree, False)


def import_graph(root: Path, packages: Iterable[str] = PACKAGES) -> tuple[set[str], list[Import]]:
    """(first-party modules, imports between them) of the source tree at ``root``."""
    files = [p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))]
    modules = {_module_name(root, p) for p in files}
    edges: list[Import] = []
    for p in files:
        mod = _module_name(root, p)
        tree = ast.parse(p.read_text(), str(p))
        seen: set[tuple[str, int]] = set()
        for target, line, in_func in _imports(tree, mod, p.name == "__init__.py"):
            # the longest first-party module the import names (`from a.b import c` -> a.b.c or a.b)
            base, _, attr = target.partition("\0")
            name = f"{base}.{attr}" if attr and f"{base}.{attr}" in modules else base
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and name != mod and (name, line) not in seen:
                seen.add((name, line))
                edges.append(Import(mod, name, line, in_func))
    return modules, edges


def violations(edges: Iterable[Import]) -> list[str]:
    """One line per import against the layer rules."""
    out = []
    for e in edges:
        src, dst = unit_of(e.importer), unit_of(e.imported)
        if src is None or dst is None:
            out.append(f"{e.importer}:{e.line} imports {e.imported}: module not in any layer")
            continue
        (su, sl), (du, dl) = src, dst
        if du == su:
            continue
        # a package's __init__ (core) is allowed to be imported by its own sub-units
        if dl.name == "core" and du in PACKAGES and e.importer.startswith(du + "."):
            continue
        if dl.name == sl.name:
            if sl.independent:
                out.append(
                    f"{e.importer}:{e.line} ({su}) imports {e.imported} ({du}): units of the "
                    f"{sl.name} layer are independent"
                )
        elif dl.name not in sl.may_import:
            out.append(f"{e.importer}:{e.line} ({sl.name}) imports {e.imported} ({dl.name})")
    return out


def cycles(modules: Iterable[str], edges: Iterable[Import]) -> list[list[str]]:
    """Strongly connected components with more than one module (import cycles)."""
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for e in edges:
        graph.setdefault(e.importer, set()).add(e.imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:  # Tarjan, iterative enough for this graph's depth
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out
