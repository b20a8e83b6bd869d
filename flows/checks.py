"""Scheduled checks as Prefect flows, deployable beside the nightly factory (docs/alerts.md).

``freshness_check`` is ``rlt check freshness`` as a flow: the same functions (flows/releases/freshness.py); a stale
or never-set alias fails the flow run (after its one alert per staleness episode), so the Prefect UI shows it too.
"""
from __future__ import annotations

from typing import Optional

from prefect import flow

from flows.recipe import load_recipe
from flows.releases import freshness
from infra.catalog.lake import open_reader
from infra.catalog.store import Store
from infra.engine.context import logger


@flow(name="rlt-freshness-check", log_prints=False)
def freshness_check(root: str, alias: Optional[str] = None, max_age: Optional[str] = None,
                    recipe_path: Optional[str] = None, notify: Optional[bool] = None) -> dict:
    """Has ``alias`` moved within ``max_age`` (26h, 90m, 2d)? ``notify`` (default: when a recipe is given) sends
    the recipe's ``stale_release`` alert once per staleness episode. Raises StaleRelease when it is not fresh."""
    recipe = load_recipe(recipe_path) if recipe_path else None
    name, max_age_s = freshness.settle(alias, max_age, recipe)
    store = Store(root)
    catalog = open_reader(store)
    try:
        result = freshness.run_check(catalog, store, name, max_age_s, recipe,
                                     notify if notify is not None else recipe is not None)
    finally:
        catalog.close()
    logger().info("freshness: %s", result.line())
    if not result.fresh:
        raise freshness.StaleRelease(result.line())
    return result.as_dict()
