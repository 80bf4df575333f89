"""One owner of the job state machine: nothing under stable_diffusion_api/ but
services/job_queue.py writes a generation's `status` — no `.values(status=…)`, no
`Generation(status=…)`, no `row.status = …`, no `{"status": JobStatus…}` column dict, no raw
`UPDATE generations SET status`. (Benchmarks have a status of their own, set only inside their
class.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "stable_diffusion_api"
OWNER = PACKAGE / "services" / "job_queue.py"
STATUS_NAMES = {"QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELED"}
RAW_UPDATE = re.compile(r"update\s+generations\s+set\b.*\bstatus\b", re.IGNORECASE | re.DOTALL)
# Classes whose own `status` attribute is not a generation's.
OTHER_STATUSES = {"Benchmark"}


def _is_job_status(node: ast.expr) -> bool:
    if isinstance(node, ast.Name):
        return node.id in STATUS_NAMES
    if isinstance(node, ast.Attribute):
        return isinstance(node.value, ast.Name) and node.value.id == "JobStatus"
    return False


def _has_status_key(node: ast.expr) -> bool:
    return isinstance(node, ast.Dict) and any(
        isinstance(key, ast.Constant) and key.value == "status" for key in node.keys
    )


class _StatusWrites(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[int, str]] = []
        self._classes: list[str] = []

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._classes.append(node.name)
        self.generic_visit(node)
        self._classes.pop()

    def _targets(self, targets: list[ast.expr], line: int) -> None:
        for target in targets:
            if isinstance(target, (ast.Tuple, ast.List)):
                self._targets(list(target.elts), line)
            elif (
                isinstance(target, ast.Attribute)
                and target.attr == "status"
                and not (self._classes and self._classes[-1] in OTHER_STATUSES)
            ):
                self.found.append((line, f"assignment to {ast.unparse(target)}"))

    def visit_Assign(self, node: ast.Assign) -> None:
        self._targets(node.targets, node.lineno)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._targets([node.target], node.lineno)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self._targets([node.target], node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        keywords = {k.arg for k in node.keywords}
        if name in ("values", "Generation") and (
            "status" in keywords or any(_has_status_key(arg) for arg in node.args)
        ):
            self.found.append((node.lineno, f"{name}(status=…)"))
        if (
            name == "setattr"
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and node.args[1].value == "status"
        ):
            self.found.append((node.lineno, "setattr(…, 'status', …)"))
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and key.value == "status" and _is_job_status(value):
                self.found.append((node.lineno, f'{{"status": {ast.unparse(value)}}}'))
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and RAW_UPDATE.search(node.value):
            self.found.append((node.lineno, "raw UPDATE generations SET status"))


def status_writes(source: str) -> list[tuple[int, str]]:
    visitor = _StatusWrites()
    visitor.visit(ast.parse(source))
    return visitor.found


def test_only_the_job_queue_writes_a_generations_status() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == OWNER or "migrations" in path.relative_to(PACKAGE).parts:
            continue
        for line, what in status_writes(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {what}")
    assert offenders == [], "status written outside services/job_queue.py:\n" + "\n".join(offenders)


def test_the_owner_is_seen_writing_and_so_would_anyone_else() -> None:
    # The check finds the writes the job queue makes, so it would find them elsewhere too.
    assert status_writes(OWNER.read_text(encoding="utf-8"))
    # The shapes the writes had before they moved into the job queue.
    before = """
session.execute(update(Generation).where(Generation.id == 1).values(status=CANCELED))
row.status = FAILED
columns = {"status": SUCCEEDED, "error": None}
queue.finish(1, {"status": JobStatus.FAILED})
session.add(Generation(project_id=1, status="running"))
status, error = CANCELED, None
self.status, self.error = "failed", "x"
connection.exec_driver_sql("UPDATE generations SET error = 'x', status = 'failed'")
"""
    assert len(status_writes(before)) == 7  # every line but the plain local variables
    assert (
        status_writes("class Benchmark:\n    def mark(self):\n        self.status = 'done'") == []
    )
    assert status_writes('{"status": "ok", "devices": []}') == []  # an HTTP answer
