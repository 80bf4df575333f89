"""No import cycles among stable_diffusion_api's modules — counting the imports under
`if TYPE_CHECKING:` and inside functions too — and no import of the Gradio UI from it."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "stable_diffusion_api"
UI_PACKAGES = ("sd_gradio", "dali_gradio")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted((ROOT / PACKAGE).rglob("*.py"))}


def imported(name: str, path: Path) -> set[str]:
    """Every module `name` (at `path`) imports, wherever in the file, absolute names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            # `from package import module` imports the module itself.
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {
        name: {other for other in imported(name, path) if other in known and other != name}
        for name, path in known.items()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, …, a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for other in sorted(graph[node]):
            if state.get(other) == 1:
                return [*path[path.index(other) :], other]
            if other not in state:
                cycle = visit(other)
                if cycle is not None:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle is not None:
                return cycle
    return None


def test_stable_diffusion_api_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 30 and "stable_diffusion_api.services.workers" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_cycle_finder_finds_what_the_worker_modules_once_had() -> None:
    # workers → device_worker → workers (under TYPE_CHECKING), and a function-level import.
    graph = {"workers": {"device_worker", "worker_process"}, "device_worker": {"workers"},
             "worker_process": {"studio"}, "studio": {"workers"}}  # fmt: skip
    assert find_cycle(graph) == ["device_worker", "workers", "device_worker"]
    del graph["device_worker"]
    graph["workers"] = {"worker_process"}
    assert find_cycle(graph) == ["studio", "workers", "worker_process", "studio"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_under_type_checking_and_in_functions_are_counted(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from stable_diffusion_api.services.workers import WorkerPool\n"
        "def f():\n    from stable_diffusion_api.services import studio\n"
        "    from . import sibling\n"
    )
    found = imported("stable_diffusion_api.services.m", source)
    assert {"stable_diffusion_api.services.workers", "stable_diffusion_api.services.studio",
            "stable_diffusion_api.services.sibling"} <= found  # fmt: skip


def ui_imports() -> list[str]:
    return [
        f"{name} imports {other}"
        for name, path in modules().items()
        for other in sorted(imported(name, path))
        if other.split(".")[0] in UI_PACKAGES
    ]


def test_nothing_in_stable_diffusion_api_imports_the_gradio_ui() -> None:
    assert ui_imports() == []
