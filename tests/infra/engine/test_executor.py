"""The executor setting (infra/engine/executor.py) without a cluster: validation, clear errors, keys unchanged.

The distributed path itself (a real 2-node Ray cluster) is tested in tests/flows/test_ray_executor.py (slow).
"""
from __future__ import annotations

import pytest

from flows.plan import stage_keys
from flows.recipe import Recipe, recipe_digest
from infra.engine import executor
from infra.engine.context import RunContext


def _recipe(**over) -> Recipe:
    return Recipe.model_validate({"name": "x", **over})


def test_local_default_keeps_the_run_context_empty_and_no_stage_goes_remote():
    r = _recipe()
    assert r.executor.kind == "local"
    ctx = RunContext("/nonexistent", tracking=False)
    assert executor.shard_executor(ctx, "generate") is None


def test_executor_never_changes_a_key_or_the_runs_recipe_hash():
    local, ray = _recipe(), _recipe(executor={"kind": "ray", "address": "10.0.0.1:6379",
                                              "resources": {"score": {"num_gpus": 1}}})
    assert [p.key for p in stage_keys(local)] == [p.key for p in stage_keys(ray)]
    assert recipe_digest(local.model_dump(mode="json")) == recipe_digest(ray.model_dump(mode="json"))


def test_unknown_recipe_fields_and_unknown_ray_options_are_named():
    with pytest.raises(Exception, match="kind"):
        _recipe(executor={"kind": "dask"})
    cfg = executor.ExecutorConfig(kind="ray", resources={"generate": {"num_cpu": 1}})
    with pytest.raises(executor.ExecutorError, match=r"executor.resources.generate: unknown Ray option\(s\) "
                                                     r"\['num_cpu'\]"):
        executor._options(cfg, "generate")


def test_default_options_spread_shards_and_carry_the_retry_budget():
    opts = executor._options(executor.ExecutorConfig(kind="ray", max_retries=5,
                                                     resources={"score": {"num_gpus": 1}}), "score")
    assert opts == {"num_cpus": 1, "num_gpus": 1, "scheduling_strategy": "SPREAD", "max_retries": 5,
                    "max_calls": 0}   # GPU shards keep their worker (and its loaded models) across shards


def test_no_address_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("RLT_RAY_ADDRESS", raising=False)
    with pytest.raises(executor.ExecutorError, match="no cluster address.*RLT_RAY_ADDRESS"):
        executor._address(executor.ExecutorConfig(kind="ray"))
    monkeypatch.setenv("RLT_RAY_ADDRESS", "127.0.0.1:1")
    assert executor._address(executor.ExecutorConfig(kind="ray")) == "127.0.0.1:1"


def test_an_ephemeral_prefect_api_is_refused_before_anything_runs(monkeypatch):
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(executor.ExecutorError, match="PREFECT_API_URL is not set"):
        executor._prefect_api_url()


def test_shard_slots_follow_the_cluster_resources():
    res = {"CPU": 4.0, "GPU": 2.0, "node_a": 1.0}
    assert executor._slots(res, {"num_cpus": 1}) == 4
    assert executor._slots(res, {"num_cpus": 1, "num_gpus": 1}) == 2
    assert executor._slots(res, {"num_cpus": 1, "resources": {"node_a": 1}}) == 1
    assert executor._slots({}, {"num_cpus": 1}) == 1


def test_env_names_are_copied_into_the_runtime_env_not_their_values_into_logs(monkeypatch, caplog):
    monkeypatch.setenv("RLT_TEST_SECRET", "s3cr3t-value")
    monkeypatch.delenv("RLT_TEST_MISSING", raising=False)
    env = executor._runtime_env(executor.ExecutorConfig(kind="ray", env=["RLT_TEST_SECRET", "RLT_TEST_MISSING"],
                                                        runtime_env={"env_vars": {"A": "1"}}))
    assert env == {"env_vars": {"A": "1", "RLT_TEST_SECRET": "s3cr3t-value"}}
    assert "s3cr3t-value" not in caplog.text and "RLT_TEST_MISSING" in caplog.text


def test_cli_flags_become_recipe_overrides(tmp_path):
    from flows.cli import build_parser
    from flows.cli.common import _recipe

    path = tmp_path / "r.yaml"
    path.write_text("name: x\n")
    args = build_parser().parse_args(["factory", "--recipe", str(path), "--executor", "ray",
                                      "--ray-address", "10.1.2.3:6379"])
    r = _recipe(args)
    assert (r.executor.kind, r.executor.address) == ("ray", "10.1.2.3:6379")


def test_a_worker_without_the_drivers_model_folder_resolves_it_again_and_checks_the_digest(tmp_path,
                                                                                           tiny_model_dir):
    from infra.engine.models import CheckpointCorrupt, checkpoint_snapshot, local_model
    from tests.tasks.helpers import setup

    ctx, _, teacher = setup(str(tmp_path / "root"), tiny_model_dir)
    snap = checkpoint_snapshot(ctx, teacher)
    assert local_model(ctx, f"artifact:{teacher.key}", snap.path, snap.digest) == snap.path   # same host
    gone = str(tmp_path / "driver-only" / "model")   # the driver's folder, absent on this "host"
    assert local_model(ctx, f"artifact:{teacher.key}", gone, snap.digest) == snap.path
    with pytest.raises(CheckpointCorrupt, match="the hosts disagree"):
        local_model(ctx, f"artifact:{teacher.key}", gone, "0" * 16)


def test_runtime_env_reaches_ray_as_the_nested_dicts_it_was():
    """The connect cache key turns back into the same runtime_env: a tuple-of-pairs key once reached Ray as
    ``env_vars=(("K", "v"),)``, which Ray refuses (no recipe could pass environment variables to workers)."""
    import json

    from infra.engine.executor import _freeze

    env = {"env_vars": {"B": "2", "A": "1"}, "pip": ["x", "y"], "working_dir": "."}
    assert json.loads(_freeze(env)) == env and _freeze(env) == _freeze(dict(reversed(list(env.items()))))


def test_prefect_slot_acquisition_failure_before_the_body_is_retried_and_a_body_error_is_not(caplog):
    """Seen in the slow suite (4 overlapping factory runs, 2 cores): Prefect's tag-slot acquisition for a stage's
    task failed against its loaded API before the body ran and failed the whole night. Such a failure is retried
    (with backoff); the body's own error is raised at once; a lasting acquisition failure surfaces after 3 retries."""
    from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError

    calls = []

    def flaky(**params):   # stands in for the Prefect task: fails like Prefect's engine twice, then runs
        calls.append(params)
        if len(calls) <= 2:
            raise ConcurrencySlotAcquisitionError("Unable to acquire concurrency slots on ['tag:stage:evaluate']")
        return {"ok": params["key"]}

    with caplog.at_level("WARNING", logger="rlt"):
        assert executor._call_here(flaky, {"key": "abcdef123456789"}, backoff_s=0.01) == {"ok": "abcdef123456789"}
    assert len(calls) == 3
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == \
        ["abcdef123456: Prefect could not start the task"] * 2

    def body_error(**params):
        calls.append(params)
        raise ValueError("the stage's own failure")

    calls.clear()
    with pytest.raises(ValueError, match="own failure"):
        executor._call_here(body_error, {"key": "k"}, backoff_s=0.01)
    assert len(calls) == 1

    def never(**params):
        calls.append(params)
        raise ConcurrencySlotAcquisitionError("down")

    calls.clear()
    with pytest.raises(ConcurrencySlotAcquisitionError):
        executor._call_here(never, {"key": "k"}, backoff_s=0.01)
    assert len(calls) == 1 + executor.ORCHESTRATION_RETRIES
