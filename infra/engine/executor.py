"""Where shard work runs: in this process (``local``, the default) or on a Ray cluster (``ray``).

Prefect stays the orchestrator; Ray becomes the executor of shard tasks. With ``kind: ray`` the shards of the
stages named in ``stages`` (generate and score by default) are submitted through ``prefect_ray.RayTaskRunner`` to
the cluster at ``address``: each shard is still a Prefect task run (``<stage>-shard``, visible in the Prefect UI),
run by a Ray worker on whichever node has the resources the stage asks for. Everything else stays on the driver:
the plan, the per-shard locks, the catalog records and the commit (infra/engine/shards.py). Workers write their parquet
parts straight to the shared store; nothing depends on a worker's local disk (a model a worker lacks is fetched
from the store and digest-verified, infra/engine/models.local_model).

What a worker needs, and how it gets it:

- our code: the same image/venv on every node (or ``runtime_env: {working_dir: ., pip: [...]}``);
- the Prefect API: the driver's settings travel with each task run, so ``PREFECT_API_URL`` must be set and
  routable from every node (an ephemeral in-process Prefect server is not: a worker would start its own);
- the store and the catalog: a shared root (``s3://...``, or a local folder only when every node is this host);
- secrets (S3 keys, MLflow login): from the node's own environment (the way `rlt stack up --ray-nodes` and
  KubeRay pods get them), or named in ``env``: those variables are copied from the driver's environment into
  the job's ``runtime_env`` (values never logged; note that Ray shows a job's runtime_env in its dashboard).

A worker killed mid-shard (or its whole node) is retried by Ray (``max_retries``) on any node that has the
resources; the retry lists the parts the dead attempt wrote whole and skips their ids, so nothing is lost or
written twice. A shard that raises is not retried by Ray (it is recorded as failed; rerun the command).
"""
from __future__ import annotations

import functools
import json
import logging
import os
import socket
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, cast

from pydantic import BaseModel, ConfigDict, Field

from data_contracts.errors import ExpectedError

if TYPE_CHECKING:
    from infra.engine.context import RunContext
    from infra.engine.shard_job import ShardJob, ShardResult

log = logging.getLogger("rlt")

RAY_STAGES = ("generate", "score")


class ExecutorConfig(BaseModel):
    """The ``executor:`` section of a recipe. Not part of any artifact key: it says where work runs, not what."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["local", "ray"] = Field(default="local", description="local: every shard in this process "
                                          "(as today); ray: shards of `stages` on the Ray cluster at `address`")
    address: Optional[str] = Field(default=None, description="Ray cluster address (host:port of the GCS, "
                                   "ray://host:10001, or auto); default $RLT_RAY_ADDRESS (`rlt stack env` sets it)")
    stages: list[str] = Field(default_factory=lambda: list(RAY_STAGES), description="stages that run on the "
                                    "cluster: a sharded stage (generate, score) spreads its shards over the nodes; "
                                    "any other stage (train_teacher, distill, evaluate, ...) runs whole as one task "
                                    "on one node with the stage's resources (a training gang of one process)")
    resources: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per stage, Ray options of each shard task, e.g. {score: {num_gpus: 1}}, "
        "{generate: {num_cpus: 1, resources: {node_a: 1}}}; default num_cpus 1, scheduling_strategy SPREAD")
    shards_in_flight: int = Field(default=0, ge=0, description="shards submitted at once per stage; 0 = twice the "
                                  "shard slots the cluster has for the stage's resources")
    max_retries: int = Field(default=3, ge=0, description="Ray re-runs a shard whose worker or node died this many "
                             "times (a shard that raises is not retried)")
    runtime_env: dict[str, Any] = Field(default_factory=dict, description="Ray runtime_env of the job "
                                        "(working_dir, pip, env_vars, ...)")
    env: list[str] = Field(default_factory=list, description="names of environment variables copied from this "
                           "process into the workers' runtime_env (e.g. AWS_SECRET_ACCESS_KEY); values never logged")


class ExecutorError(ExpectedError, RuntimeError):
    """The executor cannot run here (no cluster address, no routable Prefect API, a refused token, ...)."""


def _options(cfg: ExecutorConfig, stage: str) -> dict[str, Any]:
    # SPREAD: shards go to different nodes first (Ray's default packs a node before it spills to the next)
    opts = {"num_cpus": 1, "scheduling_strategy": "SPREAD", **cfg.resources.get(stage, {})}
    bad = sorted(set(opts) - {"num_cpus", "num_gpus", "memory", "resources", "accelerator_type",
                              "scheduling_strategy", "label_selector", "max_calls"})
    if bad:
        raise ExecutorError(f"executor.resources.{stage}: unknown Ray option(s) {bad}; expected num_cpus, num_gpus, "
                            "memory, resources, accelerator_type, scheduling_strategy, label_selector, max_calls")
    if opts.get("num_gpus"):   # Ray's default for GPU tasks is a fresh worker per task (max_calls 1): every shard
        opts.setdefault("max_calls", 0)   # would load its models again; 0 keeps the worker and its warm models
    return {**opts, "max_retries": cfg.max_retries}


def _ray_config(ctx: RunContext, stage: str) -> ExecutorConfig | None:
    if not ctx.executor:
        return None
    cfg = ExecutorConfig.model_validate(ctx.executor)
    return cfg if cfg.kind == "ray" and stage in cfg.stages else None


def shard_executor(ctx: RunContext, stage: str) -> RayShards | None:
    """A RayShards for ``stage`` when the run's executor sends its shards to Ray, else None (run them here)."""
    cfg = _ray_config(ctx, stage)
    return RayShards(cfg, stage) if cfg is not None else None


def cluster_nodes(ctx: RunContext) -> list[dict[str, Any]]:
    """``ray.nodes()`` of the run's cluster (the executor must be ray: its address and token are used)."""
    import ray

    if not ctx.executor or ctx.executor.get("kind") != "ray":
        raise ExecutorError("this needs the Ray cluster (executor.kind: ray, or --executor ray); the run is local")
    ray_cluster_for(ctx)
    return cast(list[dict[str, Any]], ray.nodes())  # type: ignore[no-untyped-call]


def ray_cluster_for(ctx: RunContext) -> dict[str, float]:
    """Connect this process to the run's Ray cluster and return its resources: the executor's cluster (address,
    runtime_env), else ``$RLT_RAY_ADDRESS`` (a training gang on Ray needs no ray executor for the other stages)."""
    cfg = ExecutorConfig.model_validate(ctx.executor or {})
    return _connect(_address(cfg), _freeze(_runtime_env(cfg)))


def run_stage(ctx: RunContext, stage: Any, task: Any, parameters: dict[str, Any]) -> Any:
    """Run a whole (non-sharded) stage's Prefect task on the cluster when the executor says so, else here.

    On the cluster the stage's runner (key, lock, MLflow run, commit) runs on one worker with the stage's
    resources, e.g. ``resources: {train_teacher: {num_gpus: 1}}``: the checkpoint is committed through the
    catalog exactly as locally, so the store and the catalog must be shared (s3:// + PostgreSQL for many hosts).
    """
    cfg = None if stage.sharded else _ray_config(ctx, stage.name)
    if cfg is None:
        return _call_here(task, parameters)
    with RayShards(cfg, stage.name) as remote:
        from prefect_ray.context import remote_options

        log.info("%s: runs whole on the Ray cluster at %s with %s", stage.name, remote.address, remote.options)
        with remote_options(**remote.options):
            return remote.runner.submit(task, parameters).result()


ORCHESTRATION_RETRIES = 3   # Prefect's own slot acquisition failing before a stage's body ran: tries after the first


def _call_here(task: Any, parameters: dict[str, Any], backoff_s: float = 2.0) -> Any:
    """The stage's Prefect task in this process. Before the body starts, Prefect acquires the task's tag concurrency
    slots (tags ``stage:<name>``, ``key:<key>``) from its API; on a loaded server that request can fail
    (``ConcurrencySlotAcquisitionError``: seen with 4 factory runs on one 2-core machine) before any of our code
    ran, so the call is made again after 2, 4, 8 s. An error of the stage's body is not retried here (it is the
    stage's failure: rerun the command, which resumes from what was committed)."""
    import time

    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    for attempt in range(ORCHESTRATION_RETRIES + 1):
        try:
            return task(**parameters)
        except ConcurrencySlotAcquisitionError as exc:
            if attempt == ORCHESTRATION_RETRIES:
                raise
            wait = backoff_s * 2 ** attempt
            log.warning("%s: Prefect could not start the task (%s); trying again in %.0f s (%d of %d)",
                        parameters.get("key", "")[:12] or "stage", exc, wait, attempt + 1, ORCHESTRATION_RETRIES)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _prefect_api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    url: str | None = PREFECT_API_URL.value()
    if not url:
        raise ExecutorError("executor ray: Ray workers run each shard as a Prefect task run and need a Prefect API "
                            "they can reach, but PREFECT_API_URL is not set (this run uses an ephemeral in-process "
                            "Prefect server, which other processes cannot reach). Start a server (`rlt stack up "
                            "--ray-nodes 2`, then eval \"$(rlt stack env)\") or point PREFECT_API_URL at yours")
    return url


def _address(cfg: ExecutorConfig) -> str:
    address = cfg.address or os.environ.get("RLT_RAY_ADDRESS")
    if not address:
        raise ExecutorError("executor ray: no cluster address; set executor.address in the recipe, --ray-address, "
                            "or RLT_RAY_ADDRESS (`rlt stack up --ray-nodes N` starts a local cluster and "
                            "`rlt stack env` exports it)")
    return address


@functools.lru_cache(maxsize=None)
def _connect(address: str, runtime_env_json: str = "{}") -> dict[str, float]:
    """``ray.init`` once per process and cluster; returns the cluster's resources. Clear errors for the usual
    ways this fails (unreachable address, missing or wrong token)."""
    import ray

    if ray.is_initialized():
        return dict(ray.cluster_resources())  # type: ignore[no-untyped-call]
    runtime_env = json.loads(runtime_env_json)
    try:
        ray.init(address=address, namespace="rlt", runtime_env=runtime_env or None, log_to_driver=False,
                 configure_logging=False)
    except Exception as exc:
        text = str(exc)
        if "token" in text.lower() or "auth" in text.lower() or type(exc).__name__.startswith("Authentication"):
            raise ExecutorError(f"the Ray cluster at {address} refused this driver: it requires its authentication "
                                "token. Set RAY_AUTH_TOKEN (eval \"$(rlt stack env)\" for the local stack; the "
                                f"cluster's token otherwise). Ray said: {text[:300]}") from exc
        hint = ""
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            # Ray logs "Unauthenticated ... InvalidAuthToken" but raises a bare ConnectionError
            hint = (". This driver has no Ray authentication token (RAY_AUTH_TOKEN is not set), and a cluster with "
                    "token authentication (on by default in Ray 2.60, and on the local stack) refuses it: set "
                    "RAY_AUTH_TOKEN (eval \"$(rlt stack env)\" for the local stack)")
        raise ExecutorError(f"cannot connect to the Ray cluster at {address}: {type(exc).__name__}: "
                            f"{text[:300]}{hint}") from exc
    nodes = [n for n in ray.nodes() if n.get("Alive")]  # type: ignore[no-untyped-call]
    log.info("executor ray: connected to %s (%d live node(s), resources %s)", address, len(nodes),
             {k: v for k, v in ray.cluster_resources().items()  # type: ignore[no-untyped-call]
              if not k.startswith("node:")})
    return dict(ray.cluster_resources())  # type: ignore[no-untyped-call]


def disconnect() -> None:
    """Leave the cluster this process connected to (end of a run): a Ray driver whose cluster later goes away
    is ended by Ray itself (its GCS reconnect timeout), so a long-lived process must not stay attached."""
    if _connect.cache_info().currsize:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        _connect.cache_clear()


def _runtime_env(cfg: ExecutorConfig) -> dict[str, Any]:
    env = dict(cfg.runtime_env)
    copied = {name: os.environ[name] for name in cfg.env if name in os.environ}
    missing = [n for n in cfg.env if n not in os.environ]
    if missing:
        log.warning("executor ray: env %s not set here; not passed to the workers", missing)
    if copied:
        env["env_vars"] = {**env.get("env_vars", {}), **copied}
    return env


def _freeze(d: dict[str, Any]) -> str:
    """A runtime_env as a cache key for ``_connect`` that turns back into the same nested dicts and lists (a
    tuple-of-pairs key once reached Ray as ``env_vars=((k, v),)`` and was refused)."""
    return json.dumps(d, sort_keys=True)


class RayShards:
    """Submits one stage's shards to Ray through Prefect's RayTaskRunner."""

    def __init__(self, cfg: ExecutorConfig, stage: str):
        self.cfg, self.stage = cfg, stage
        self.options = _options(cfg, stage)
        self.address = _address(cfg)
        self.prefect_api = _prefect_api_url()
        env = _runtime_env(cfg)
        frozen = _freeze(env)
        resources = _connect(self.address, frozen)
        self._runtime_env = env
        self.in_flight = cfg.shards_in_flight or max(1, 2 * _slots(resources, self.options))
        self._runner: Any = None   # the entered prefect_ray RayTaskRunner (inside ``with``)

    def __enter__(self) -> "RayShards":
        from prefect_ray import RayTaskRunner

        self._runner = RayTaskRunner(address=self.address).__enter__()   # ray is initialised: the runner borrows it
        log.info("%s: shards run on the Ray cluster at %s, %d in flight, each with %s", self.stage, self.address,
                 self.in_flight, {k: v for k, v in self.options.items() if k != "max_retries"})
        return self

    @property
    def runner(self) -> Any:
        if self._runner is None:
            raise RuntimeError(f"{self.stage}: the Ray task runner is used outside ``with RayShards(...)``")
        return self._runner

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            self._runner.__exit__(*exc)
            self._runner = None

    def submit(self, task: Any, fn: Callable[..., ShardResult], job: ShardJob, args: tuple[Any, ...]
               ) -> RayShardFuture:
        """Run ``fn(job, *args)`` as the Prefect task ``task`` on a Ray worker; a future the shard loop settles."""
        from prefect_ray.context import remote_options

        named = task.with_options(task_run_name=f"{self.stage}-shard-{job.shard_id}")
        with remote_options(**self.options):
            fut = self.runner.submit(named, {"fn": fn, "job": job, "args": tuple(args)})
        return RayShardFuture(fut)


class RayShardFuture:
    """A Prefect-on-Ray future with the ``wrapped_future`` (a concurrent Future) the shard loop waits on."""

    def __init__(self, fut: Any):
        self._fut = fut
        self.wrapped_future: Future[Any] = fut.wrapped_future.future()

    def result(self) -> Any:
        return self._fut.result()


def _slots(resources: dict[str, float], options: dict[str, Any]) -> int:
    """How many shard tasks with ``options`` the cluster can run at once (by its total resources)."""
    need = {"CPU": options.get("num_cpus", 1), "GPU": options.get("num_gpus", 0),
            **options.get("resources", {})}
    counts = [int(resources.get(k, 0) // v) for k, v in need.items() if v]
    return max(1, min(counts)) if counts else 1


def run_remote_shard(fn: Callable[..., ShardResult], job: ShardJob, args: tuple[Any, ...]) -> ShardResult:
    """The shard task's body on a Ray worker: the parts an earlier attempt left (a worker or node killed
    mid-shard) are listed here, so their ids are skipped and the dead attempt's parts are kept, not duplicated."""
    from infra.engine.shard_job import done_ids

    job.digests = {}
    job.done_ids = done_ids(job.ctx, job)
    if job.done_ids:
        log.info("%s shard %s: %d rows already written by an earlier attempt", job.stage, job.shard_id,
                 len(job.done_ids))
    res = fn(job, *args)
    res.host, res.pid, res.node = socket.gethostname(), os.getpid(), node_name()
    return res


def node_name() -> str:
    """The node this process runs on: $RLT_RAY_NODE (set by `rlt stack up --ray-nodes`), else Ray's node id."""
    name = os.environ.get("RLT_RAY_NODE")
    if name:
        return name
    try:
        import ray

        return ray.get_runtime_context().get_node_id()[:12] if ray.is_initialized() else ""
    except Exception:
        return ""
