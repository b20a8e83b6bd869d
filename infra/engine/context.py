"""What every stage shares: the run context (store, catalog, locks, tracking) and small helpers."""
from __future__ import annotations

import functools
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import BaseModel

from data_contracts.errors import ExpectedError
from infra.catalog.lake import Catalog
from infra.catalog.locks import Locks, owner_info
from infra.catalog.store import Store
from infra.openlineage import Emitter as LineageEmitter
from infra.tracking import Tracker

log = logging.getLogger("rlt")


class StageFailed(ExpectedError, RuntimeError):
    """A stage (or some of its shards) failed; committed work is kept for the rerun."""


def new_run_id() -> str:
    return "run-" + time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


@dataclass
class RunContext:
    """Resources of one run. Picklable parts only (root, ids); store, catalog and locks are rebuilt lazily."""

    root: str
    run_id: str = field(default_factory=new_run_id)
    mlflow_parent: str = ""
    tracking: bool = True
    tracking_uri: str | None = None
    catalog_url: str | None = None
    fail_shards: tuple[str, ...] = ()   # fault injection for tests: "stage:shard_id"
    flow_name: str = ""     # the flow running the stages (OpenLineage parent job); "" outside a flow
    recipe_name: str = ""   # the recipe's name (OpenLineage job names: "<recipe>.<stage>")
    # the recipe's `costs:` (RLT_PRICE_* win; infra/engine/costs.py)
    prices: dict[str, Any] = field(default_factory=dict)
    # the recipe's `executor:` (infra/engine/executor.py); {} = local
    executor: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def store(self) -> Store:
        return Store(self.root)

    @functools.cached_property
    def catalog(self) -> Catalog:
        return Catalog(self.store, self.catalog_url)

    @functools.cached_property
    def reader(self) -> Catalog:
        """A read-only handle on the same catalog (on PostgreSQL as the reader role, ``RLT_CATALOG_READER_URL``), for
        work that only reads, such as the run's report."""
        return Catalog(self.store, self.catalog_url, read_only=True)

    @functools.cached_property
    def locks(self) -> Locks:
        return self.catalog.location.locks()

    @functools.cached_property
    def tracker(self) -> Tracker:
        return Tracker(self.store.root, uri=self.tracking_uri, enabled=self.tracking, run_id=self.run_id)

    @functools.cached_property
    def lineage(self) -> LineageEmitter:
        """OpenLineage events of this run's stage runs (off, and free, unless configured: infra/openlineage.py)."""
        return LineageEmitter(self.store.root)

    def owner(self) -> dict[str, Any]:
        return owner_info(self.run_id)

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("store", "catalog", "reader", "tracker", "locks",
                                                                      "lineage")}

    def should_fail(self, stage: str, shard: str) -> bool:
        return f"{stage}:{shard}" in self.fail_shards or f"{stage}:*" in self.fail_shards


def logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """Prefect's run logger inside a run, the module logger outside (never imports Prefect just to log)."""
    if "prefect" not in sys.modules:
        return log
    try:
        from prefect import get_run_logger

        return get_run_logger()
    except Exception:
        return log


def config_dict(cfg: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    return cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else dict(cfg)


def host() -> str:
    return socket.gethostname()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
