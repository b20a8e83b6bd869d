"""Shared fixtures: the SmolLM2 tokenizer, tiny random models on its vocabulary, the real builtin model."""
from __future__ import annotations

import logging
import os

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.infra.devstack.services_fixtures"]


def pytest_configure(config):
    """Each test session gets a Prefect home of its own (unless one is given): the in-process flows and every
    `rlt` subprocess share it, and the user's ~/.prefect neither grows with test runs nor leaks old runs into the
    tests' Prefect queries (the server answers 200 rows at most)."""
    if "PREFECT_HOME" not in os.environ:
        import tempfile

        home = tempfile.mkdtemp(prefix="rlt-tests-prefect-")
        os.environ["PREFECT_HOME"] = home
        config._rlt_prefect_home = home


def pytest_unconfigure(config):
    home = getattr(config, "_rlt_prefect_home", None)
    if home:
        import shutil

        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def smol_tokenizer_dir() -> str:
    from infra.models import builtin_tokenizer_dir

    return builtin_tokenizer_dir()


@pytest.fixture(scope="session")
def smol_tokenizer(smol_tokenizer_dir):
    from rlt_core.modeling import load_tokenizer

    return load_tokenizer(smol_tokenizer_dir)


@pytest.fixture
def tiny_lm(smol_tokenizer):
    from rlt_core.modeling import tiny_causal_lm

    return tiny_causal_lm(smol_tokenizer, seed=0)


@pytest.fixture(scope="session")
def smol_model_path() -> str:
    from infra.models import resolve_model

    return resolve_model("builtin:smollm2-135m-instruct").path


@pytest.fixture(autouse=True)
def _quiet_http_logs():
    for name in ("httpx", "urllib3", "botocore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    yield


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smol_tokenizer_dir) -> str:
    """A saved tiny random-weight model (safetensors) + the SmolLM2 tokenizer: a valid model reference."""
    from rlt_core.modeling import load_tokenizer, tiny_causal_lm

    tok = load_tokenizer(smol_tokenizer_dir)
    out = tmp_path_factory.mktemp("tiny-model")
    model = tiny_causal_lm(tok, seed=0)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return str(out)


def pytest_sessionfinish(session, exitstatus):
    # Prefect stops its temporary API server at interpreter exit and logs to a stream pytest has closed by then
    logging.raiseExceptions = False


def pytest_collection_modifyitems(session, config, items):
    """The Ray-executor tests run last: they point this process's Prefect client at a stack's server that their
    fixture then stops, and Prefect's background services (concurrency-slot leases) keep the client they were
    made with; tests after them would call a server that is gone."""
    last = [i for i in items if i.nodeid.startswith("tests/flows/test_ray_executor.py")]
    if last:
        items[:] = [i for i in items if i not in last] + last
