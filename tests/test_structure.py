"""Static structure checks (``ast`` only, nothing imported): import layers, cycles, module sizes, test isolation."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PKG = "medadv_monai"
MAX_LINES = 450

# Lowest first. A unit (top-level module or subpackage) may import any lower layer, and its own layer's peers
# only where that makes no cycle. Every unit in the package must be listed here (detectors: planned, DESIGN.md).
LAYERS: list[set[str]] = [
    {"medadv_monai", "errors"},  # the root __init__ only holds __version__
    {"utils", "settings"},  # settings: the rules of the user-facing config ids
    {"bundle"},  # finding / reading bundle configs
    {"data", "masks"},
    {"metrics", "attacks", "networks"},
    {"losses", "detectors"},
    {"visualize"},
    {"handlers"},
    {"engines"},
    {"bench", "demo"},
    {"cli", "__main__"},
]


def _modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the package folder ``root``."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def module_graph(root: Path) -> dict[str, dict[str, int]]:
    """``{module: {imported module: line}}`` for imports within the package (function bodies included)."""
    files, top = _modules(root), root.name

    def resolve(name: str) -> str:
        while name not in files and "." in name:
            name = name.rpartition(".")[0]
        return name

    graph: dict[str, dict[str, int]] = {}
    for mod, path in files.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        edges = graph.setdefault(mod, {})
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: anchor on the importing module's package
                    base = ".".join(package.split(".")[: package.count(".") + 2 - node.level] + [base] * bool(base))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            for name in names:
                if name.split(".")[0] == top and (target := resolve(name)) != mod:
                    edges.setdefault(target, node.lineno)
    return graph


def unit(module: str) -> str:
    """The top-level module or subpackage a module is in (``medadv_monai`` for the root ``__init__``)."""
    return module.split(".")[1] if "." in module else module


def unit_graph(graph: dict[str, dict[str, int]]) -> dict[str, dict[str, list[str]]]:
    """``{unit: {imported unit: ["a.b:line -> c.d", ...]}}``, leaving out a unit's imports of itself."""
    out: dict[str, dict[str, list[str]]] = {}
    for mod, edges in graph.items():
        out.setdefault(unit(mod), {})
        for target, line in edges.items():
            if unit(target) != unit(mod):
                out[unit(mod)].setdefault(unit(target), []).append(f"{mod}:{line} -> {target}")
    return out


def find_cycles(units: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """Every cycle met by a depth-first search, as a closed path ``[a, b, ..., a]``, each rotation once."""
    cycles, seen, done = [], set(), set()

    def visit(node: str, path: list[str]) -> None:
        for nxt in sorted(units.get(node, {})):
            if nxt in path:
                cycle = path[path.index(nxt):]
                key = frozenset(zip(cycle, cycle[1:] + cycle[:1]))
                if key not in seen:
                    seen.add(key)
                    cycles.append([*cycle, nxt])
            elif nxt not in done:
                visit(nxt, [*path, nxt])
        done.add(node)

    for start in sorted(units):
        if start not in done:
            visit(start, [start])
    return cycles


def layer_violations(units: dict[str, dict[str, list[str]]], layers: list[set[str]]) -> list[str]:
    """Imports of a higher layer, and units missing from the layer table."""
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    bad = [f"{u}: not in the layer table" for u in sorted(units) if u not in rank]
    for src, targets in sorted(units.items()):
        for dst, where in sorted(targets.items()):
            if src in rank and dst in rank and rank[dst] > rank[src]:
                bad.append(f"{src} (layer {rank[src]}) imports {dst} (layer {rank[dst]}): {'; '.join(where)}")
    return bad


def cli_importers(units: dict[str, dict[str, list[str]]]) -> list[str]:
    return [w for u, targets in sorted(units.items()) if u != "__main__" for w in targets.get("cli", [])]


def long_modules(root: Path, limit: int = MAX_LINES) -> list[str]:
    counts = {p: len(p.read_text(encoding="utf-8").splitlines()) for p in sorted(root.rglob("*.py"))}
    return [f"{p.relative_to(root.parent)}: {n} lines" for p, n in counts.items() if n > limit]


def imports_of_test_modules(tests_dir: Path) -> list[str]:
    """Imports of a test module (or of conftest) by any module in ``tests_dir``."""
    bad = []
    for path in sorted(tests_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # from tests import test_x / from . import test_x too
                names = [a.name for a in node.names] if node.module in (None, "tests") else [node.module]
            else:
                continue
            for name in names:
                last = name.removeprefix("tests.").split(".")[0]
                if last.startswith("test_") or last == "conftest":
                    bad.append(f"{path.name}:{node.lineno} imports {name}")
    return bad


def cli_references(bundles_dir: Path) -> list[str]:
    configs = [p for p in sorted(bundles_dir.glob("*/configs/*")) if p.suffix in {".yaml", ".yml", ".json"}]
    return [f"{p.relative_to(bundles_dir.parent)}:{i}" for p in configs
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"\bmedadv_monai\.cli\b", line)]


@functools.lru_cache(maxsize=1)
def _real_units() -> dict[str, dict[str, list[str]]]:
    return unit_graph(module_graph(REPO / PKG))


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text, encoding="utf-8")
    return tmp_path / PKG


# ---------------------------------------------------------------------------------------------- the real tree
def test_no_import_cycles_between_packages():
    cycles = find_cycles(_real_units())
    assert not cycles, "import cycles between packages:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_upward_imports():
    bad = layer_violations(_real_units(), LAYERS)
    table = " | ".join(", ".join(sorted(layer)) for layer in LAYERS)
    assert not bad, f"imports against the layer table (lowest first: {table}):\n" + "\n".join(bad)


def test_cli_imported_only_by_main():
    users = cli_importers(_real_units())
    assert not users, f"{PKG}.cli is the entry point only, yet imported by: {users}"


def test_modules_not_too_long():
    bad = long_modules(REPO / PKG)
    assert not bad, f"modules over {MAX_LINES} lines:\n" + "\n".join(bad)


def test_tests_do_not_import_each_other():
    bad = imports_of_test_modules(REPO / "tests")
    assert not bad, "test modules import other test modules (share code through tests/helpers.py):\n" + "\n".join(bad)


def test_bundle_configs_do_not_reference_cli():
    bad = cli_references(REPO / "bundles")
    assert not bad, f"bundle configs reference {PKG}.cli (the command only):\n" + "\n".join(bad)


# -------------------------------------------------------------------------------- the checks can fail
def test_checks_catch_cycle_and_upward_import(tmp_path):
    root = _tree(tmp_path, {
        f"{PKG}/__init__.py": "",
        f"{PKG}/errors.py": "",
        f"{PKG}/attacks/__init__.py": "from .fgsm import run\n",  # a package importing its own submodule: fine
        f"{PKG}/attacks/fgsm.py": "from medadv_monai.attacks import _core\ndef run():\n    from ..masks import x\n",
        f"{PKG}/attacks/_core.py": "from .. import errors\n",
        f"{PKG}/masks/__init__.py": "x = 1\n",
        f"{PKG}/masks/core.py": "import medadv_monai.attacks.fgsm\n",
    })
    graph = module_graph(root)
    assert graph[f"{PKG}.attacks.fgsm"] == {f"{PKG}.attacks._core": 1, f"{PKG}.masks": 3}
    assert graph[f"{PKG}.attacks._core"] == {f"{PKG}.errors": 1}
    units = unit_graph(graph)
    assert find_cycles(units) == [["attacks", "masks", "attacks"]]
    bad = layer_violations(units, LAYERS)
    assert len(bad) == 1 and bad[0].startswith("masks (layer 3) imports attacks (layer 4)")
    assert "medadv_monai.masks.core:1 -> medadv_monai.attacks.fgsm" in bad[0]
    assert layer_violations({"newpkg": {}}, LAYERS) == ["newpkg: not in the layer table"]


def test_other_checks_can_fail(tmp_path):
    root = _tree(tmp_path, {
        f"{PKG}/__init__.py": "",
        f"{PKG}/__main__.py": "from medadv_monai.cli import main\n",
        f"{PKG}/cli.py": "",
        f"{PKG}/demo.py": "x = 1\n" * MAX_LINES + "from . import cli\n",
    })
    assert long_modules(root) == [f"{PKG}/demo.py: {MAX_LINES + 1} lines"]
    assert cli_importers(unit_graph(module_graph(root))) == [f"medadv_monai.demo:{MAX_LINES + 1} -> medadv_monai.cli"]
    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text("from tests.helpers import h\nfrom tests.test_b import f\nimport test_c\n"
                                     "from tests import helpers, test_d\n")
    assert imports_of_test_modules(tests) == [
        "test_a.py:2 imports tests.test_b", "test_a.py:3 imports test_c", "test_a.py:4 imports test_d"]
    (tmp_path / "bundles/b/configs").mkdir(parents=True)
    (tmp_path / "bundles/b/configs/train.yaml").write_text("imports:\n  - $import medadv_monai.cli\n")
    assert cli_references(tmp_path / "bundles") == ["bundles/b/configs/train.yaml:2"]
