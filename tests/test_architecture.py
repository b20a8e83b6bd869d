"""The dependency rule and the rooms.

Layers: ``data_contracts <- rlt_core, infra <- tasks <- flows``; ``rlt_core`` imports none of prefect, fsspec/s3fs,
duckdb, mlflow, ray. Rooms inside ``infra``: ``catalog`` (store, lake, locks) is the bottom and imports neither the
engine nor the dev stack; ``devstack`` (local services) does not import the engine; ``engine`` runs declared stages
and may use both. ``tasks`` holds the seven stage bodies and nothing else. No module imports its way back to itself,
not even through an import inside a function (the way circles used to be dodged).
"""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("data_contracts", "rlt_core", "tasks", "flows", "infra")
FORBIDDEN = {   # folder -> module prefixes its files may not import
    "data_contracts": {"rlt_core", "tasks", "flows", "infra", "prefect", "fsspec", "s3fs", "duckdb", "mlflow",
                       "torch", "transformers", "ray"},
    "rlt_core": {"tasks", "flows", "infra", "prefect", "fsspec", "s3fs", "duckdb", "mlflow", "ray"},
    "infra": {"tasks", "flows", "prefect.flows"},
    "infra/catalog": {"infra.engine", "infra.devstack", "infra.tracking", "infra.openlineage", "prefect", "mlflow",
                      "torch", "ray"},
    "infra/devstack": {"infra.engine", "infra.tracking", "torch"},
    "tasks": {"flows", "infra.devstack", "infra.catalog.lake", "infra.catalog.locks"},
}
STAGES = {"ingest", "train_teacher", "generate", "score", "filter", "distill", "evaluate"}


def _imports(path: pathlib.Path) -> set[str]:
    """Every module a file imports, anywhere in it (function-local imports included), as dotted names."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _blocked(name: str, prefixes: set[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_layer_imports(folder):
    bad = []
    for f in sorted((ROOT / folder).rglob("*.py")):
        for name in _imports(f):
            if _blocked(name, FORBIDDEN[folder]):
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_the_rule_is_checked_on_real_files():
    assert len(list((ROOT / "rlt_core").rglob("*.py"))) >= 5
    assert "torch" in set().union(*(_imports(f) for f in (ROOT / "rlt_core").rglob("*.py")))
    assert _blocked("infra.engine.runner", {"infra.engine"}) and not _blocked("infra.engines", {"infra.engine"})


def test_tasks_holds_the_stage_bodies_and_nothing_else():
    modules = {f.stem for f in (ROOT / "tasks").glob("*.py")} - {"__init__"}
    assert modules == STAGES, f"tasks/ is for the seven stages; move {sorted(modules - STAGES)} to its room"
    assert not [p for p in (ROOT / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"]


def _module_graph() -> dict[str, set[str]]:
    files = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f

    def resolve(name: str) -> str:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name

    return {mod: {r for r in map(resolve, _imports(f)) if r and r != mod} for mod, f in files.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    m = stack.pop()
                    on_stack.discard(m)
                    comp.append(m)
                    if m == node:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    assert _cycles(_module_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
