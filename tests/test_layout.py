"""The house: one folder per stage, no import circle, no import running from a lower stage to a higher one, small modules.

Every import inside the package is read from the source (module level and inside functions alike) and checked
against the stage order the README's layout table states.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "qwen_instruct_det"
# stage -> floor: a module may import its own stage and any stage on a lower floor, nothing else
STAGES = {"boxes": 0, "budget": 0, "formats": 1, "data": 2, "eval": 3, "models": 4, "train": 5, "hub": 6, "visualize": 6, "commands": 7,
          "__init__": 8, "__main__": 8}
MOST_LINES = 420


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports() -> dict[str, set[str]]:
    """Module -> the package's modules it imports (at any level, anywhere in the file)."""
    modules = {_module(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                base = importlib.util.resolve_name("." * node.level + (node.module or ""), package) if node.level else node.module or ""
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            for target in targets:
                while target and target not in modules:  # an imported name, not a module: its module
                    target = target.rpartition(".")[0]
                if target.startswith("qwen_instruct_det") and target != name and target != "qwen_instruct_det":
                    found.add(target)
        graph[name] = found
    return graph


def test_no_import_runs_to_a_higher_stage_or_sideways():
    wrong = []
    for module, targets in _imports().items():
        for target in targets:
            a, b = _stage(module), _stage(target)
            if STAGES[b] > STAGES[a] or (STAGES[b] == STAGES[a] and a != b):
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_every_module_belongs_to_a_stage():
    assert {_stage(m) for m in _imports()} <= set(STAGES)


def test_no_import_circle():
    graph = _imports()
    seen, on_path, circles = set(), [], []

    def visit(node):
        if node in on_path:
            circles.append(on_path[on_path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        on_path.pop()

    for node in sorted(graph):
        visit(node)
    assert not circles, circles


def test_no_module_much_over_400_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > MOST_LINES}
    assert not long, long
