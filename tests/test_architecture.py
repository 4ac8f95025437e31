"""The layout the README describes, held: imports go one way, with no circle anywhere
in the production code; the domain knows nothing of Celery; only the outbox module
writes outbox rows. Read from the source (ast), every import counted, also those inside
functions (a circle held open by a function-level import is still a circle); imports
only for type checkers (`if TYPE_CHECKING:`) are not."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("actions", "app", "core", "domain", "models", "tasks")
MODULES = ("bootstrap", "celeryapp", "celeryconfig", "flowerconfig", "wsgi")
# Which layers each may import (besides itself). bootstrap is the composition root:
# it imports the layers; app and the entry modules ask it for their parts.
ALLOWED = {
    "core": {"core"},
    "models": {"core", "models"},
    "domain": {"core", "models", "domain"},
    "actions": {"core", "models", "domain", "actions"},
    "tasks": {"core", "models", "domain", "actions", "tasks", "celeryconfig"},
    "celeryconfig": {"core"},
    "bootstrap": {"core", "models", "tasks"},
    "app": {"core", "models", "domain", "actions", "app", "bootstrap", "celeryconfig", "tasks"},
}


def _files() -> dict[str, Path]:
    found = {name: ROOT / f"{name}.py" for name in MODULES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


FILES = _files()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path) -> set[str]:
    """The project modules `name` imports at run time."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from models import outbox` imports the submodule models.outbox.
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in FILES else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            while target and target not in FILES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


GRAPH = {name: _imports(name, path) for name, path in FILES.items()}


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in GRAPH[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            visit(node)
    return components


def test_no_import_circle_in_the_production_code():
    assert _cycles() == []


def test_the_graph_is_read_at_all():
    """The reader finds imports it must find (else the other tests prove nothing)."""
    assert "tasks.celery_app" in GRAPH["bootstrap"]
    assert "models.outbox" in GRAPH["domain.payments"]
    assert "tasks.dead_letters" in GRAPH["tasks.base"]


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_go_one_way(layer):
    wrong = {
        (name, target)
        for name, targets in GRAPH.items()
        if name.split(".")[0] == layer
        for target in targets
        if target.split(".")[0] not in ALLOWED[layer]
    }
    assert wrong == set()


def test_the_domain_knows_nothing_of_celery():
    """No Celery or kombu import, no task name: the domain stores and returns typed
    values; tasks/ owns what Celery needs."""
    offenders = []
    for name, path in FILES.items():
        if not name.startswith("domain"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [(name, m) for m in modules if m.split(".")[0] in ("celery", "kombu")]
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value.startswith("tutorflow.")
                and node.value.count(".") >= 2
            ):
                offenders.append((name, node.value))
    assert offenders == []


def test_only_the_outbox_module_writes_outbox_rows():
    """Every writer goes through models.outbox, which registers the row for the
    after-commit publish: none can forget to."""
    offenders = []
    for name, path in FILES.items():
        if name == "models.outbox":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            called = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
            first = node.args[0] if node.args else None
            if called == "OutboxMessage" or (
                called == "insert" and isinstance(first, ast.Name) and first.id == "OutboxMessage"
            ):
                offenders.append((name, node.lineno))
    assert offenders == []
