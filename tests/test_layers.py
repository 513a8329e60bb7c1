"""The layer rules of p2es/architecture.py hold on the source tree, and the checker catches a
forbidden import or a cycle when one is added."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

from p2es.architecture import LAYERS, Import, cycles, import_graph, layer_of, violations

REPO = Path(__file__).resolve().parent.parent


def test_every_module_has_a_layer() -> None:
    modules, _ = import_graph(REPO)
    assert len(modules) > 60
    assert [m for m in sorted(modules) if layer_of(m) is None] == []


def test_imports_follow_the_layers() -> None:
    _, edges = import_graph(REPO)
    assert violations(edges) == []


def test_no_import_cycles() -> None:
    modules, edges = import_graph(REPO)
    assert cycles(modules, edges) == []


def test_model_layer_is_pure() -> None:
    """engine.model imports nothing from ingest, sink, alerts, dashboards, and from wearable
    only the simulator and the readers (the issue's rule, spelled out)."""
    _, edges = import_graph(REPO)
    bad = [
        e
        for e in edges
        if e.importer.startswith("engine.model")
        and (
            e.imported.split(".")[0] in ("ingest", "sink", "alerts", "dashboards")
            or e.imported.startswith(
                ("engine.serve", "engine.app", "wearable.publisher", "wearable.cli", "p2es.transport")
            )
        )
    ]
    assert bad == []


def _tree(tmp: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    for pkg in ("engine", "engine/model", "engine/serve", "sink", "ingest", "alerts", "p2es"):
        (tmp / pkg).mkdir(parents=True, exist_ok=True)
        (tmp / pkg / "__init__.py").touch()
    return tmp


def test_a_forbidden_import_is_caught(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "engine/model/net.py": "import numpy\nfrom sink.writer import Writer\n",
            "sink/writer.py": "Writer = object\n",
            "ingest/service.py": "def f():\n    from alerts import state  # lazy: test\n",
            "alerts/state.py": "",
            "engine/serve/runtime.py": "from engine.model import net\n",  # allowed: downward
        },
    )
    _, edges = import_graph(root, ("engine", "sink", "ingest", "alerts"))
    v = violations(edges)
    assert any(s.startswith("engine.model.net:2 (model) imports sink.writer (transport)") for s in v), v
    assert any("ingest.service:2" in s and "independent" in s for s in v), v  # services siblings
    assert not any("engine.serve.runtime" in s for s in v), v
    assert len(v) == 2


def test_a_cycle_is_caught(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "engine/model/a.py": "from engine.model import b\n",
            "engine/model/b.py": "def f():\n    from engine.model.a import x  # lazy: test\n",
        },
    )
    modules, edges = import_graph(root, ("engine",))
    assert cycles(modules, edges) == [["engine.model.a", "engine.model.b"]]
    assert violations(edges) == []  # same unit: allowed, but a cycle


def test_upward_import_in_the_real_tree_would_fail() -> None:
    """Adding one upward edge to the real graph (the model importing the pipeline) is reported."""
    modules, edges = import_graph(REPO)
    extra = Import("engine.model.network", "engine.app.pipeline", 1, False)
    assert violations([*edges, extra]) == [
        "engine.model.network:1 (model) imports engine.app.pipeline (application)"
    ]


def test_layers_are_declared_once() -> None:
    names = [layer.name for layer in LAYERS]
    assert len(set(names)) == len(names)
    units = [u for layer in LAYERS for u in layer.units]
    assert len(set(units)) == len(units)


def test_function_level_imports_say_why() -> None:
    """An import inside a function is there for an optional/heavy dependency, CLI start-up time
    or a cycle it avoids, and says so with a ``# lazy:`` comment on its line."""
    missing = []
    for pkg in ("p2es", "engine", "ingest", "sink", "alerts", "dashboards", "wearable"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            lines = path.read_text().splitlines()
            tree = ast.parse("\n".join(lines))
            for fn in ast.walk(tree):
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                for node in ast.walk(fn):
                    if isinstance(node, (ast.Import, ast.ImportFrom)):
                        text = " ".join(lines[node.lineno - 1 : (node.end_lineno or node.lineno)])
                        if "# lazy:" not in text:
                            missing.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert sorted(set(missing)) == []
