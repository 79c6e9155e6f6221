"""Print the `bridge` package's internal import graph (stdlib only; run from the repo root).

    python scripts/module_graph.py            # one line per module: what it imports from bridge
    python scripts/module_graph.py --layers   # the same, collapsed to components (bridge.log, bridge.sources, ...)

Counts every import, including those inside functions and under TYPE_CHECKING, as import-linter does.
`lint-imports` checks the contracts in pyproject.toml against the same graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "bridge"
#: Components shown as one node with --layers (packages, and the top-level modules on their own).
PACKAGES = ("bridge.log", "bridge.sources", "bridge.archive", "bridge.dev", "bridge.witness")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, name: str, modules: set[str]) -> set[str]:
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            subs = {f"{base}.{a.name}" for a in node.names} & modules
            found.update(subs or {base})
    return found


def graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}
    edges: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = {t for t in imports_of(path, name, set(paths)) if t in paths and t != name}
        edges[name] = targets
    return edges


def component(module: str) -> str:
    return next((p for p in PACKAGES if module == p or module.startswith(p + ".")), module)


def main(argv: list[str]) -> None:
    edges = graph()
    if "--layers" in argv:
        collapsed: dict[str, set[str]] = {}
        for src, targets in edges.items():
            node = collapsed.setdefault(component(src), set())
            node.update(component(t) for t in targets if component(t) != component(src))
        edges = collapsed
    for src in sorted(edges):
        print(f"{src} -> {', '.join(sorted(edges[src])) or '(nothing)'}")


if __name__ == "__main__":
    main(sys.argv[1:])
