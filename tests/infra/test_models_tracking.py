"""The builtin model (a real forward pass) and MLflow tracking on a real sqlite store."""
from __future__ import annotations

import time

import torch

from infra.models import folder_digest, resolve_model
from infra.tracking import Tracker


def test_builtin_model_provisions_once_reloads_fast_and_generates(smol_model_path):
    t0 = time.time()
    snap = resolve_model("builtin:smollm2-135m-instruct")
    assert time.time() - t0 < 2.0, "second resolution must reuse the saved snapshot"
    assert snap.path == smol_model_path
    assert snap.digest == folder_digest(snap.path) and len(snap.digest) == 16
    from rlt_core.modeling import load_causal_lm, load_tokenizer

    tok = load_tokenizer(snap.path)
    model = load_causal_lm(snap.path)
    assert not getattr(model.config, "quantization_config", None)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    text = tok.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True)
    assert "Paris" in text, text


def test_unknown_model_reference_is_a_clear_error(tmp_path):
    import pytest

    with pytest.raises(FileNotFoundError, match="neither"):
        resolve_model("no-such-model")
    with pytest.raises(ValueError, match="unknown builtin"):
        resolve_model("builtin:gpt-5")
    with pytest.raises(FileNotFoundError, match="safetensors"):
        resolve_model(str(tmp_path))


def test_tracking_parent_and_nested_runs_with_redacted_params(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tr = Tracker(str(tmp_path))
    assert tr.uri == f"sqlite:///{tmp_path}/mlflow.db"
    parent = tr.start_run("factory:test")
    child = tr.start_run("score", parent_run_id=parent, tags={"rlt.artifact_key": "abc"})
    tr.log_params(child, {"reward": {"kl_coef": [3, 0.03]}, "aws_secret_access_key": "hunter2",
                          "endpoint": "https://user:pw@example.invalid/x"})
    tr.log_metrics(child, {"reward_mean": -1.5}, step=3)
    tr.end_run(child)
    tr.end_run(parent)
    run = tr.client.get_run(child)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.data.tags["rlt.artifact_key"] == "abc"
    assert run.data.params["reward.kl_coef"] == "[3, 0.03]"
    assert run.data.params["aws_secret_access_key"] == "***"
    assert "pw" not in run.data.params["endpoint"]
    assert run.data.metrics["reward_mean"] == -1.5
    assert tr.client.get_run(parent).info.status == "FINISHED"


def test_experiment_created_by_another_run_meanwhile_is_reused(tmp_path):
    """Two nights starting together against one MLflow server: both see no experiment, one creates it first;
    the other's create is refused by the store (RESOURCE_ALREADY_EXISTS) and must use the existing one."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = Tracker(str(tmp_path), uri=uri, experiment="race")
    run_id = first.start_run("first")
    client = MlflowClient(tracking_uri=uri)
    existing = client.get_experiment_by_name("race").experiment_id
    # the second run lost the race: its lookup said "none", its create is refused by the real store
    second = Tracker(str(tmp_path), uri=uri, experiment="race")
    assert second._create_experiment(client, None) == existing
    assert second.start_run("second") and run_id
    assert {r.info.experiment_id for r in client.search_runs([existing])} == {existing}
    assert len(client.search_runs([existing])) == 2
