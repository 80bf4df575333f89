"""The routes stay thin, read from their source (ast):

- the page modules never touch the database themselves (no sqlalchemy, no `.db`/`.session`,
  no ORM class): every read and write goes through a service of the studio;
- no `async def` handler or dependency in routes/ makes a call on the event loop that may block
  (the services read the database and files): it either awaits the call (`await
  run_in_threadpool(studio.projects.list)`, `await request.form()`) or the call is on CHEAP,
  a short list of calls known not to block. Anything else belongs in a plain `def` handler,
  which FastAPI runs in the thread pool.

Each checker is also run on a few lines that break its rule, so a checker that sees nothing
fails here too.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import stable_diffusion_api.models
from stable_diffusion_api import routes

ROUTES = Path(routes.__file__).parent
PAGE_MODULES = ("pages.py", "forms.py", "templating.py")
ROUTE_METHODS = {"get", "post", "put", "patch", "delete", "head", "options", "api_route"}

# Calls an async handler may make on the event loop: none reads a file or the database, none
# waits on a lock another thread holds for long. A new entry needs a reason beside it.
CHEAP = {
    "list",  # builtin: a list of what it is given (its argument is checked on its own)
    "DeviceOut",  # pydantic models and conversions of data already in memory
    "SamplerOut",
    "SpeedOut.model_validate",
    "Page[].model_validate",
    "page_of",
    "model_out",
    "benchmark_out",
    "studio.samplers.list",  # asked of the engine once, then a cached list
    "studio.workers.benchmarks.values",  # an in-memory dict
    "_immutable_file",  # headers and a FileResponse, which reads the file when it is sent
    "StreamingResponse",  # wraps the event stream; the stream itself awaits its reads
    "generation_events",  # an async generator: calling it runs nothing yet
    "project_events_stream",  # the same, for a project's stream
}


def dotted(node: ast.expr) -> str:
    """`studio.projects.list` for the callee of `studio.projects.list()`; `Page[]` for a
    subscript; `?` for anything else (a call's result, a lambda)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Subscript):
        return f"{dotted(node.value)}[]"
    return "?"


def is_route(function: ast.AsyncFunctionDef) -> bool:
    for decorator in function.decorator_list:
        if (
            isinstance(decorator, ast.Call)
            and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr in ROUTE_METHODS
        ):
            return True
    return False


def is_generator(function: ast.AsyncFunctionDef) -> bool:
    own = [n for n in ast.walk(function) if isinstance(n, ast.Yield | ast.YieldFrom)]
    return bool(own)


def async_functions(tree: ast.Module) -> list[ast.AsyncFunctionDef]:
    """The module's async handlers and async dependencies: every top-level `async def` that is
    a route or a plain coroutine (an async generator is a stream, whose body runs later)."""
    return [
        node
        for node in tree.body
        if isinstance(node, ast.AsyncFunctionDef) and (is_route(node) or not is_generator(node))
    ]


def blocking_calls(function: ast.AsyncFunctionDef) -> list[str]:
    """The calls in `function` that run on the event loop and are not known to be cheap."""
    body = [node for statement in function.body for node in ast.walk(statement)]
    awaited = {
        id(node.value)
        for node in body
        if isinstance(node, ast.Await) and isinstance(node.value, ast.Call)
    }
    calls = [node for node in body if isinstance(node, ast.Call) and id(node) not in awaited]
    calls.sort(key=lambda node: (node.lineno, node.col_offset))
    return [
        f"{function.name}:{node.lineno} calls {dotted(node.func)}()"
        for node in calls
        if dotted(node.func) not in CHEAP
    ]


def database_uses(tree: ast.Module) -> list[str]:
    """Where a module reaches the database itself instead of through a service."""
    orm_classes = {
        name for name, value in vars(stable_diffusion_api.models).items() if isinstance(value, type)
    }
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"{node.lineno}: import {a.name}" for a in node.names if "sqlalchemy" in a.name
            ]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if "sqlalchemy" in module or module == "stable_diffusion_api.db":
                found.append(f"{node.lineno}: from {module} import …")
            if module == "stable_diffusion_api.models":
                found += [
                    f"{node.lineno}: ORM class {a.name}"
                    for a in node.names
                    if a.name in orm_classes
                ]
        elif isinstance(node, ast.Attribute) and node.attr in {"db", "session", "_db"}:
            found.append(f"{node.lineno}: .{node.attr}")
    return found


def parse(name: str) -> ast.Module:
    return ast.parse((ROUTES / name).read_text(), filename=name)


def test_the_page_modules_reach_the_database_only_through_services() -> None:
    for name in PAGE_MODULES:
        assert database_uses(parse(name)) == [], name


def test_the_database_check_sees_a_session_opened_in_a_route() -> None:
    source = """
        from sqlalchemy import select
        from stable_diffusion_api.models import FINISHED, Generation

        def settings(studio, image_id):
            with studio.db.session() as session:
                return session.get(Generation, image_id)
    """
    found = database_uses(ast.parse(textwrap.dedent(source)))
    assert [entry.split(": ", 1)[1] for entry in found] == [
        "from sqlalchemy import …",
        "ORM class Generation",  # FINISHED, a constant, is fine
        ".session",
        ".db",
    ]


def test_no_async_handler_in_routes_blocks_the_event_loop() -> None:
    checked = 0
    problems: list[str] = []
    for path in sorted(ROUTES.glob("*.py")):
        for function in async_functions(parse(path.name)):
            checked += 1
            problems += [f"{path.name}: {problem}" for problem in blocking_calls(function)]
    assert problems == []
    assert checked >= 10  # the JSON API's polled routes and the pages' form dependency at least


def test_the_pages_form_handlers_are_plain_def() -> None:
    """Each handler that reads a form and calls a service runs in the thread pool."""
    tree = parse("pages.py")
    handlers = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and any(
            "FormDep" in ast.unparse(arg.annotation or ast.Constant(None)) for arg in node.args.args
        )
    ]
    assert {h.name for h in handlers} >= {"create_project", "update_project", "generate"}
    assert [h.name for h in handlers if isinstance(h, ast.AsyncFunctionDef)] == []


def test_the_event_loop_check_sees_blocking_calls() -> None:
    source = """
        @pages.post("/projects")
        async def create_project(request, studio):
            form = await request.form()
            project = studio.projects.create(parse(form))
            return render(request, "home.html", {"projects": studio.projects.list()})

        @router.get("/projects")
        async def list_projects(studio):
            return await run_in_threadpool(studio.projects.list)

        @router.get("/projects/{project_id}")
        async def read_project(studio, project_id):
            return await run_in_threadpool(lambda: 1, studio.projects.view(project_id))

        async def dependency(request):
            return load(request)

        async def stream(studio):
            yield studio.projects.list()
    """
    tree = ast.parse(textwrap.dedent(source))
    functions = async_functions(tree)
    assert [f.name for f in functions] == [
        "create_project", "list_projects", "read_project", "dependency",
    ]  # fmt: skip
    found = [problem for f in functions for problem in blocking_calls(f)]
    assert [problem.split(" calls ")[1] for problem in found] == [
        "studio.projects.create()",
        "parse()",
        "render()",
        "studio.projects.list()",
        # awaited run_in_threadpool is fine; an argument evaluated on the loop is not
        "studio.projects.view()",
        "load()",
    ]
