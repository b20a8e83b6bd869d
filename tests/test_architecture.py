"""The dependency rule: data_contracts <- rlt_core <- tasks <- flows; infra only from tasks and flows."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "data_contracts": {"rlt_core", "tasks", "flows", "infra", "prefect", "fsspec", "s3fs", "duckdb", "mlflow",
                       "torch", "transformers"},
    "rlt_core": {"tasks", "flows", "infra", "prefect", "fsspec", "s3fs", "duckdb", "mlflow"},
    "infra": {"tasks", "flows", "prefect.flows"},
    "tasks": {"flows"},
}


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layer_imports(package):
    bad = []
    for f in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(f):
            top = name.split(".")[0]
            if top in FORBIDDEN[package] or name in FORBIDDEN[package]:
                bad.append(f"{f.relative_to(ROOT)} imports {name}")
    assert not bad, "\n".join(bad)


def test_the_rule_is_checked_on_real_files():
    assert len(list((ROOT / "rlt_core").rglob("*.py"))) >= 5
    assert "torch" in set().union(*(_imports(f) for f in (ROOT / "rlt_core").rglob("*.py")))
