"""Nightly scheduling: a Prefect deployment with a cron schedule, or `serve` from this process."""
from __future__ import annotations

import os
from pathlib import Path

from flows.recipe import load_recipe
from infra.settings import data_root

REPO = Path(__file__).resolve().parent.parent


def _params(recipe_path: str, overrides: list[str], root: str | None) -> dict:
    recipe = load_recipe(recipe_path, overrides)
    return {"recipe": recipe.model_dump(mode="json"), "root": data_root(root),
            "recipe_path": os.path.abspath(recipe_path)}


def deploy(recipe_path: str, overrides: list[str], cron: str, name: str, pool: str, root: str | None) -> str:
    """Register the factory as a deployment on a Prefect server (PREFECT_API_URL), on a process work pool.

    A worker runs the scheduled runs: ``prefect worker start --pool <pool>``.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    from flows.factory import factory_flow

    if not os.environ.get("PREFECT_API_URL"):
        raise SystemExit("rlt deploy: set PREFECT_API_URL to a Prefect server (e.g. from `rlt stack up`); "
                         "or use `rlt serve` to schedule from this process")
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"))
    deployment_id = factory_flow.from_source(source=str(REPO), entrypoint="flows/factory.py:factory_flow").deploy(
        name=name, work_pool_name=pool, cron=cron, parameters=_params(recipe_path, overrides, root),
        print_next_steps=False, build=False, push=False)
    return f"deployment rlt-factory/{name} ({deployment_id}) on pool {pool!r}, cron {cron!r}; " \
           f"start a worker: prefect worker start --pool {pool}"


def serve(recipe_path: str, overrides: list[str], cron: str, name: str, root: str | None) -> None:
    from flows.factory import factory_flow

    factory_flow.serve(name=name, cron=cron, parameters=_params(recipe_path, overrides, root))
