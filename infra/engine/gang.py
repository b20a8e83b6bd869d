"""Training stages as a gang of ranks: the stage's own process stays the one owner (key lock, MLflow run, commit,
cost record: infra/engine/runner.py) and launches N ranks of the training body only (rlt_core/training/launch.py:
teacher SFT, teacher GRPO with the RLT reward, student distillation) on an existing launcher:

- ``local``: ``torch.distributed.run`` on this host (rlt_core/training/gang.py ``launch_local``: its own process
  group, a supervisor that reports a failed rank in one line);
- ``ray``: Ray Train's ``TorchTrainer`` across the Ray cluster's nodes (``ScalingConfig``: one worker per rank, each
  with ``resources``, placed by a SPREAD placement group; ``TorchConfig``: gloo on CPU, NCCL on GPU, the
  collective timeout); the cluster is the executor's (recipe ``executor.address`` / ``$RLT_RAY_ADDRESS``);
- ``inprocess`` (the default): no gang, the stage trains in its own process as it always did.

Ranks write nothing to the catalog, the tracker or the store: rank 0 writes the phase models, ``result.json`` and
the metrics it logged into the stage's work folder (which every rank must reach: on one host it is local; across
hosts it must be a shared folder), and the owner registers them: the metrics into the stage's MLflow run, the
tokens into its cost record, the final model as the stage's checkpoint (digest-verified by the commit). A rerun of
the same key resumes from the last complete checkpoint in the work folder and does not redo finished steps
(``steps_run`` counts the ones it computed). The launch shape is never part of a key (``NOT_IN_KEY``); the global
batch is: per-rank batch and accumulation are derived from it, or the recipe is refused (``check_batch``).
"""
from __future__ import annotations

import json
import logging
import os
from typing import TYPE_CHECKING, Any, Literal, Optional, Sequence

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from infra.engine.stage import StageRun
    from rlt_core.training.job import Launch, TrainJob

log = logging.getLogger("rlt")
Dtype = Literal["float32", "bfloat16"]

Launcher = Literal["inprocess", "local", "ray"]


class LaunchConfig(BaseModel):
    """A training stage's ``launch:`` section: how many ranks, on which launcher, sharing the model how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    launcher: Launcher = Field(default="inprocess", description="inprocess: train in the stage's process (no gang); "
                               "local: torchrun on this host; ray: Ray Train across the cluster's nodes")
    ranks: int = Field(default=1, ge=1, description="processes in the gang (one per GPU, or per CPU slice)")
    strategy: Literal["ddp", "fsdp", "deepspeed_zero3"] = Field(
        default="ddp", description="ddp; fsdp (FSDP2 through accelerate, GPUs); deepspeed_zero3 (GPUs, optional "
        "extra)")
    threads_per_rank: Optional[int] = Field(default=None, ge=1, description="torch threads per rank (CPU)")
    collective_timeout_s: float = Field(default=600.0, gt=0, description="bound on any one collective: a dead rank "
                                        "stops its peers within it")
    timeout_s: Optional[float] = Field(default=None, gt=0, description="wall-clock bound on the whole gang")
    resources: dict[str, Any] = Field(default_factory=dict, description="ray: per rank, e.g. {CPU: 1} or {GPU: 1}")

    @property
    def gang(self) -> bool:
        return self.launcher != "inprocess"

    def rlt_launch(self) -> "Launch":
        """The rank-side spec (rlt_core/training/job.py ``Launch``)."""
        from rlt_core.training.job import Launch

        return Launch(ranks=self.ranks, strategy=self.strategy, threads_per_rank=self.threads_per_rank,
                      collective_timeout_s=self.collective_timeout_s)


def check_batch(launch: LaunchConfig, phases: Sequence[tuple[str, int, int]]) -> None:
    """Refuse a launch shape that cannot keep each phase's global batch: ``phases`` = (recipe field, global batch,
    per-rank batch). Raises ValueError naming the field (pydantic turns it into the recipe's error)."""
    if not launch.gang or launch.ranks == 1:
        return
    from rlt_core.training.distributed import derive_batch

    for field_name, global_batch, per_rank in phases:
        try:
            derive_batch(global_batch, launch.ranks, per_rank)
        except ValueError as err:
            raise ValueError(f"{field_name}: {err}") from None


def write_rows(path: str, rows: Sequence[dict[str, Any]]) -> str:
    """The training rows as JSON Lines for every rank to read (written once by the owner, atomically)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(path + ".tmp", path)
    return path


def train(run: StageRun, launch: LaunchConfig, phases: list[Any], dtype: Dtype) -> dict[str, Any]:
    """Train ``phases`` (rlt_core.training.job phase specs) as a gang for ``run``; returns rank 0's result (steps,
    steps computed by this launch, per-phase results, the final model folder). Replays rank 0's metrics into the
    stage's MLflow run and counts the tokens. Raises ``GangFailed`` (one line naming the rank and host)."""
    from rlt_core.training.job import TrainJob

    job = TrainJob(phases=phases, output_dir=run.work_dir(), launch=launch.rlt_launch(), dtype=dtype)
    job.batch_plans()
    metrics_path = os.path.join(job.output_dir, "metrics.jsonl")
    offset = os.path.getsize(metrics_path) if os.path.exists(metrics_path) else 0
    log.info("%s: training as a gang of %d rank(s) (%s, %s) in %s", run.stage.name, launch.ranks, launch.launcher,
             launch.strategy, job.output_dir)
    result = _launch_ray(run, job, launch) if launch.launcher == "ray" else _launch_local(job, launch)
    _replay_metrics(run, metrics_path, offset)
    for phase in result["phases"].values():
        run.count_tokens(**{k: phase.get(k) for k in ("tokens_in", "tokens_out", "forward_tokens")})
    log.info("%s: the gang trained %d step(s) (%d by this launch, the rest resumed) on %s", run.stage.name,
             result["steps"], result["steps_run"], result.get("host", "?"))
    return result


def _launch_local(job: TrainJob, launch: LaunchConfig) -> dict[str, Any]:
    from rlt_core.training.gang import launch_local

    return launch_local(job, timeout_s=launch.timeout_s)


def _replay_metrics(run: StageRun, path: str, offset: int) -> None:
    """What rank 0 logged during this launch, into the stage's MLflow run (ranks never talk to the tracker)."""
    if not os.path.exists(path):
        return
    log_metric = run.metric_logger()
    with open(path, encoding="utf-8") as f:
        f.seek(offset)
        for line in f:
            m = json.loads(line)
            log_metric(m["name"], m["value"], m["step"])


# ---------------------------------------------------------------------------------------------- Ray Train
def _ray_rank(config: dict[str, Any]) -> None:
    """One Ray Train worker = one rank: the process group is Ray Train's; rank 0 writes the result."""
    import ray

    from rlt_core.training.distributed import NODE_ENV
    from rlt_core.training.job import TrainJob
    from rlt_core.training.launch import run_rank

    # the node's name for the result's placement: the devstack's node label when there is one, else Ray's node id
    os.environ[NODE_ENV] = os.environ.get("RLT_RAY_NODE") or ray.get_runtime_context().get_node_id()
    run_rank(TrainJob.model_validate_json(config["job"]))


def _launch_ray(run: StageRun, job: TrainJob, launch: LaunchConfig) -> dict[str, Any]:
    """The gang as a Ray Train ``TorchTrainer`` on the executor's cluster; rank 0's ``result.json`` is the result."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from infra.engine.executor import ray_cluster_for
    from rlt_core.training.gang import RESULT_FILE, GangFailed

    ray_cluster_for(run.ctx)   # connected (with the recipe's runtime_env), or a one-line error
    check_room(launch)
    gpus = bool(launch.resources.get("GPU") or launch.resources.get("num_gpus"))
    trainer = TorchTrainer(
        _ray_rank, train_loop_config={"job": job.model_dump_json()},
        scaling_config=ScalingConfig(num_workers=launch.ranks, use_gpu=gpus,
                                     resources_per_worker=dict(launch.resources) or None,
                                     placement_strategy="SPREAD"),
        torch_config=TorchConfig(backend="nccl" if gpus else "gloo", timeout_s=int(launch.collective_timeout_s)),
        run_config=RunConfig(name=f"rlt-{run.stage.name}-{run.key[:12]}",
                             storage_path=os.path.join(job.output_dir, "ray_train"),
                             failure_config=FailureConfig(max_failures=0)))
    try:
        trainer.fit()
    except Exception as exc:   # Ray Train's TrainingFailedError: the worker's error is inside, several lines
        raise GangFailed(f"training gang failed on Ray: {_first_line(exc)}") from exc
    with open(os.path.join(job.output_dir, RESULT_FILE), encoding="utf-8") as f:
        result: dict[str, Any] = json.load(f)
    return result


def check_room(launch: LaunchConfig, nodes: Optional[list[dict[str, Any]]] = None) -> None:
    """Refuse, in one line, a gang the live nodes cannot hold whatever else runs (a lost node, resources no node
    has): Ray Train would otherwise wait for them without end. Counts each node's total resources, not what is
    free now (a busy cluster is worth waiting for)."""
    from rlt_core.training.gang import GangFailed

    if nodes is None:
        import ray

        nodes = ray.nodes()   # type: ignore[no-untyped-call]
    alias = {"num_cpus": "CPU", "num_gpus": "GPU"}
    need = {alias.get(k, k): float(v) for k, v in (launch.resources or {"CPU": 1}).items() if float(v) > 0}
    live = [n for n in nodes if n.get("Alive")]
    room = sum(min((int(n.get("Resources", {}).get(k, 0) // v) for k, v in need.items()), default=launch.ranks)
               for n in live)
    if room < launch.ranks:
        raise GangFailed(f"training gang cannot start on Ray: its {len(live)} live node(s) hold {room} of the "
                         f"{launch.ranks} ranks of {need} each (launch.resources); start more nodes or ask for fewer "
                         "ranks")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    named = next((ln for ln in lines if "rank" in ln.lower() or "worker" in ln.lower()), None)
    return (named or (lines[0] if lines else type(exc).__name__))[:400]
