"""What every `rlt` command shares: the environment set before prefect/mlflow load, the console and its tables, the
run context, the recipe (with --set / --executor overrides), the read-only catalog reader, the recipe options."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

from flows.errors import QuietExpected

log = logging.getLogger("rlt")
NOISY_LOGGERS = ("httpx", "urllib3", "botocore", "aiobotocore", "alembic", "mlflow", "filelock", "prefect.server")


def _setup_env(root_arg: str | None = None, debug: bool = False) -> None:
    """Environment defaults, set before prefect/mlflow are imported (they read settings at import)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    root = root_arg or os.environ.get("RLT_DATA_ROOT") or "./rlt-data"
    if "://" not in root and not os.environ.get("PREFECT_API_URL") and not os.environ.get("PREFECT_HOME"):
        # embedded default: the ephemeral Prefect database lives in the data root, beside the artifacts
        os.environ["PREFECT_HOME"] = os.path.join(os.path.abspath(root), "_prefect", "home")
        os.makedirs(os.environ["PREFECT_HOME"], exist_ok=True)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.basicConfig(level=os.environ.get("RLT_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # (aiobotocore logs "Found credentials in environment variables." at INFO on every S3 client it makes)
    for noisy in NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not debug:
        for name in ("prefect.task_runs", "prefect.flow_runs"):
            logging.getLogger(name).addFilter(QuietExpected())


def _console():
    from rich.console import Console

    # piped output (logs, CI, tests): wide enough that keys and ids are never folded
    return Console() if sys.stdout.isatty() else Console(width=200)


def _table(rows: list[dict], title: str = "") -> None:
    from rich.table import Table
    from rich.text import Text

    if not rows:
        _console().print(f"[dim]{title}: no rows[/dim]")
        return
    t = Table(title=title or None, show_lines=False)
    for c in rows[0]:
        t.add_column(str(c), overflow="fold")
    for r in rows:
        t.add_row(*[Text(_short(v)) for v in r.values()])   # values are data, not markup: `filter[reference]`
    _console().print(t)


def _short(v: Any, n: int = 80) -> str:
    s = str(v)
    return s if len(s) <= n else s[: n - 1] + "…"


def _ctx(args):
    from infra.engine.context import RunContext
    from infra.settings import data_root

    return RunContext(root=data_root(args.data_root))


def _store(args):
    from infra.catalog.store import Store
    from infra.settings import data_root

    return Store(data_root(args.data_root))


def _reader(args, snapshot: int | None = None):
    """The catalog's read-only handle (the reader role, $RLT_CATALOG_READER_URL, where one is set)."""
    from infra.catalog.lake import open_reader

    return open_reader(_store(args), snapshot=snapshot)


def _recipe(args):
    from flows.recipe import load_recipe

    return load_recipe(args.recipe, args.set + _executor_overrides(args))


def _executor_overrides(args) -> list[str]:
    """--executor / --ray-address as recipe overrides (the executor is not part of any key)."""
    out = []
    if getattr(args, "executor", None):
        out.append(f"executor.kind={args.executor}")
    if getattr(args, "ray_address", None):
        out.append(f"executor.address={args.ray_address}")
    return out


class Parser(argparse.ArgumentParser):
    """``intermixed=True`` (given to ``add_parser``): options may also sit between positionals, as in ``rlt catalog sql
    --snapshot 12 "SELECT ..."`` (plain argparse takes the action, leaves the query optional and empty at the option,
    then refuses the query as an unrecognized argument)."""

    def __init__(self, *args, intermixed: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.intermixed = intermixed

    def parse_known_args(self, args=None, namespace=None):
        if not self.intermixed:
            return super().parse_known_args(args, namespace)
        self.intermixed = False   # parse_known_intermixed_args calls parse_known_args (twice) itself
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self.intermixed = True


def recipe_args(sp: argparse.ArgumentParser) -> None:
    """--recipe, --set, --executor, --ray-address: the options of every command that runs or plans a recipe."""
    sp.add_argument("--recipe", required=True, help="recipe YAML (see flows/recipes/)")
    sp.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a recipe field, e.g. generate.num_samples=2 (repeatable)")
    sp.add_argument("--executor", choices=["local", "ray"], default=None,
                    help="where shards of generate and score run: here (local, the default) or on a Ray cluster "
                         "(ray; see docs/scale-out.md). Overrides the recipe's executor.kind; never changes a key")
    sp.add_argument("--ray-address", default=None, metavar="HOST:PORT",
                    help="the Ray cluster (default: executor.address, else $RLT_RAY_ADDRESS from `rlt stack env`)")
