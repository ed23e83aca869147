"""Package layering, read from the source's import statements (lazy imports inside functions included):
models/ holds modules and math only (never loaders/, pipeline, tiny), and no import cycle exists between units."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "python_backend" / "wan_distill"
FOLDERS = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}


def _unit(module: str) -> str:
    """wan_distill.models.dit -> 'models'; wan_distill.pipeline -> 'pipeline'; wan_distill -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, source: str | None = None) -> set[str]:
    """Every wan_distill module ``path`` imports (absolute or relative, at any depth of the file)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    source = path.read_text() if source is None else source
    found: set[str] = set()
    for node in ast.walk(ast.parse(source, str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "wan_distill"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "wan_distill":
                continue
            found.add(target)
            folder = PKG.parent / target.replace(".", "/")
            found |= {f"{target}.{a.name}" for a in node.names
                      if (folder / a.name).is_dir() or (folder / f"{a.name}.py").is_file()}
    return found


def unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in PKG.rglob("*.py"):
        src = _unit(_module_name(path))
        if not src:
            continue
        graph.setdefault(src, set()).update(u for u in map(_unit, imported_modules(path)) if u and u != src)
    return graph


def test_parser_sees_relative_absolute_and_lazy_imports():
    fake = PKG / "models" / "fake.py"   # not written: only its name places the source in models/
    source = ("import torch\nfrom .dit import WanDiT\ndef f():\n    from ..loaders.files import preview\n"
              "from wan_distill import pipeline\nimport wan_distill.tiny\nfrom .. import loaders\n")
    got = {_unit(m) for m in imported_modules(fake, source)} - {""}
    assert got == {"models", "loaders", "pipeline", "tiny"}
    graph = unit_graph()
    assert {"models", "loaders", "schedulers"} <= FOLDERS
    assert "models" in graph["loaders"]                      # from ..models.dit import WanDiT
    assert "loaders" in graph["pipeline"] and "config" in graph["models"]
    assert "loaders" in graph["tiny"]


@pytest.mark.parametrize("path", sorted((PKG / "models").glob("*.py")), ids=lambda p: p.name)
def test_models_import_only_models_config_errors(path):
    bad = {m for m in imported_modules(path) if _unit(m) not in ("models", "config", "errors")}
    assert not bad, f"{path.name} imports {sorted(bad)}: models/ must not depend on loaders/, pipeline, tiny, ..."


def test_loaders_never_import_upwards():
    for path in (PKG / "loaders").glob("*.py"):
        bad = {m for m in imported_modules(path) if _unit(m) in ("pipeline", "tiny", "deployment", "schedulers")}
        assert not bad, f"loaders/{path.name} imports {sorted(bad)}"


def test_no_import_cycle_between_units():
    graph = unit_graph()
    state: dict[str, int] = {}

    def visit(u: str, stack: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                raise AssertionError(f"import cycle: {' -> '.join(stack[stack.index(v):] + [v])}")
            if v not in state:
                visit(v, stack + [v])
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u, [u])
