"""Generation backends: the HF sampler on a tiny real model, sampling maths, and the vLLM client's HTTP protocol.

The vLLM client is exercised here against a small local HTTP server: that tests *our* request building, retries and
error handling (a protocol test). The real vLLM server is tested in tests/infra/devstack/test_vllm_server.py.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydantic
import pytest
import torch

from rlt_core.generation import (
    GenerationError,
    Generator,
    GenRequest,
    HFGenerator,
    SamplingConfig,
    VLLMServerGenerator,
    cut_at_stop,
    sample_rows,
    top_p_filter,
)
from tests.fake_http import send_json

PROMPTS = [
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "hello",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName three prime numbers larger than ten.<|im_end|>\n"
    "<|im_start|>assistant\n<|begin_of_explanation|>\n\n",
    "x y z",
    "A longer plain prompt, with punctuation; and several clauses, so that the padding differs a lot.",
]


def _requests(n: int, seed0: int = 0) -> list[GenRequest]:
    return [GenRequest(f"r{i}", PROMPTS[i % len(PROMPTS)], seed0 + i) for i in range(n)]


# ---------------------------------------------------------------------------------------------------- config


def test_sampling_config_forbids_unknown_fields_and_bad_values():
    with pytest.raises(pydantic.ValidationError, match="temprature"):
        SamplingConfig(temprature=0.5)
    with pytest.raises(pydantic.ValidationError):
        SamplingConfig(top_p=0.0)
    with pytest.raises(pydantic.ValidationError):
        SamplingConfig(max_new_tokens=0)
    with pytest.raises(pydantic.ValidationError, match="non-empty"):
        SamplingConfig(stop=("",))


def test_sampling_config_digest_is_stable_and_sensitive():
    a = SamplingConfig(temperature=0.7, stop=("</s>",))
    assert a.digest() == SamplingConfig(stop=("</s>",), temperature=0.7).digest()
    assert a.digest() == SamplingConfig.model_validate_json(a.model_dump_json()).digest()
    others = [SamplingConfig(temperature=0.8, stop=("</s>",)), SamplingConfig(temperature=0.7),
              SamplingConfig(temperature=0.7, stop=("</s>",), max_new_tokens=513),
              SamplingConfig(temperature=0.7, stop=("</s>",), top_p=0.9)]
    assert len({a.digest(), *(o.digest() for o in others)}) == 5


def test_cut_at_stop_uses_earliest_stop():
    assert cut_at_stop("ab STOP cd END", ["END", "STOP"]) == ("ab ", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


# ---------------------------------------------------------------------------------------------------- sampling maths


def test_top_p_keeps_smallest_nucleus():
    logits = torch.log(torch.tensor([[0.05, 0.5, 0.15, 0.3]]))
    kept = torch.isfinite(top_p_filter(logits, 0.75))
    assert kept.tolist() == [[False, True, False, True]]  # 0.5 + 0.3 reaches 0.75
    assert torch.isfinite(top_p_filter(logits, 0.4)).tolist() == [[False, True, False, False]]
    assert torch.equal(top_p_filter(logits, 1.0), logits)


def test_gumbel_sampling_matches_softmax_with_temperature():
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    cfg = SamplingConfig(temperature=0.7)
    n = 6000
    gens = [torch.Generator().manual_seed(s) for s in range(n)]
    draws = sample_rows(logits.expand(n, -1), gens, cfg)
    freq = torch.bincount(draws, minlength=4).float() / n
    expected = torch.softmax(logits / 0.7, dim=-1)
    # binomial std is <= 0.0065 at n=6000: 4 sigma
    assert torch.allclose(freq, expected, atol=0.026), (freq, expected)


def test_sample_rows_row_depends_only_on_its_generator():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    cfg = SamplingConfig(temperature=1.0)
    alone = sample_rows(logits[1:2], [torch.Generator().manual_seed(7)], cfg)
    batched = sample_rows(logits, [torch.Generator().manual_seed(s) for s in (1, 7, 3)], cfg)
    assert batched[1] == alone[0]


# ---------------------------------------------------------------------------------------------------- HF backend


def test_hf_generator_satisfies_protocol(tiny_lm, smol_tokenizer):
    assert isinstance(HFGenerator(tiny_lm, smol_tokenizer), Generator)


def test_hf_same_seed_same_text_whatever_the_batch(tiny_lm, smol_tokenizer):
    reqs = _requests(8)
    cfg = SamplingConfig(temperature=1.0, max_new_tokens=12)
    runs = {b: HFGenerator(tiny_lm, smol_tokenizer, batch_size=b).generate(reqs, cfg) for b in (1, 3, 8)}
    smol_tokenizer.padding_side = "right"  # the generator must pad left whatever the tokenizer says
    try:
        runs["right"] = HFGenerator(tiny_lm, smol_tokenizer, batch_size=8).generate(reqs, cfg)
    finally:
        smol_tokenizer.padding_side = "left"
    texts = {b: [r.text for r in res] for b, res in runs.items()}
    assert texts[1] == texts[3] == texts[8] == texts["right"]
    assert [r.request_id for r in runs[3]] == [r.request_id for r in reqs]
    # a different seed gives a different sample (random 49k-vocab model: a collision is practically impossible)
    reseeded = HFGenerator(tiny_lm, smol_tokenizer, batch_size=8).generate(_requests(8, seed0=100), cfg)
    assert all(a.text != b.text for a, b in zip(runs[8], reseeded))


def test_hf_duplicate_prompt_and_seed_in_one_batch_agree(tiny_lm, smol_tokenizer):
    reqs = [GenRequest("a", PROMPTS[0], 5), GenRequest("b", PROMPTS[2], 9), GenRequest("c", PROMPTS[0], 5)]
    res = HFGenerator(tiny_lm, smol_tokenizer, batch_size=3).generate(reqs, SamplingConfig(max_new_tokens=10))
    assert res[0].text == res[2].text
    assert res[0].text != res[1].text


def test_hf_greedy_matches_transformers_generate(tiny_lm, smol_tokenizer):
    reqs = _requests(5)
    res = HFGenerator(tiny_lm, smol_tokenizer, batch_size=5).generate(reqs, SamplingConfig(temperature=0,
                                                                                            max_new_tokens=10))
    for req, r in zip(reqs, res):
        ids = smol_tokenizer(req.prompt, add_special_tokens=False, return_tensors="pt").input_ids
        ref = tiny_lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=10, do_sample=False)
        assert r.text == smol_tokenizer.decode(ref[0, ids.shape[1]:], skip_special_tokens=True)
        assert r.prompt_tokens == ids.shape[1]
        assert (r.finish_reason, r.completion_tokens) == ("length", 10)
        assert r.latency_s > 0


def _reference_tokens(model, tok, prompt: str, seed: int, n: int, cfg: SamplingConfig) -> list[int]:
    """The sampler without KV cache, padding or batching: full recompute per token, one generator."""
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt").input_ids
    gen, out = torch.Generator().manual_seed(seed), []
    with torch.no_grad():
        for _ in range(n):
            nxt = sample_rows(model(ids).logits[:, -1, :], [gen], cfg)
            out.append(int(nxt))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    return out


def test_hf_batched_cached_sampler_matches_naive_reference(tiny_lm, smol_tokenizer):
    reqs = _requests(5, seed0=3)
    cfg = SamplingConfig(temperature=0.9, top_p=0.95, max_new_tokens=10)
    res = HFGenerator(tiny_lm, smol_tokenizer, batch_size=5).generate(reqs, cfg)
    for req, r in zip(reqs, res):
        ref = _reference_tokens(tiny_lm, smol_tokenizer, req.prompt, req.seed, 10, cfg)
        assert r.text == smol_tokenizer.decode(ref, skip_special_tokens=True)


SAMPLED = SamplingConfig(temperature=1.0, max_new_tokens=16)


def test_hf_eos_from_generation_config_ends_with_stop(tiny_lm, smol_tokenizer):
    toks = _reference_tokens(tiny_lm, smol_tokenizer, PROMPTS[0], 0, 16, SAMPLED)
    k = next(i for i in range(3, 16) if toks[i] not in toks[:i])  # first fresh token from step 3 on
    tiny_lm.generation_config.eos_token_id = toks[k]  # make that token an end-of-sequence token
    (res,) = HFGenerator(tiny_lm, smol_tokenizer).generate([GenRequest("r", PROMPTS[0], 0)], SAMPLED)
    assert (res.finish_reason, res.completion_tokens) == ("stop", k + 1)
    assert res.text == smol_tokenizer.decode(toks[:k + 1], skip_special_tokens=True)


def test_hf_stop_string_cuts_text_and_counts_the_trigger_token(tiny_lm, smol_tokenizer):
    toks = _reference_tokens(tiny_lm, smol_tokenizer, PROMPTS[1], 0, 16, SAMPLED)
    full = smol_tokenizer.decode(toks, skip_special_tokens=True)
    for k in range(4, 16):  # a token whose text is non-blank and first appears at step k
        piece = smol_tokenizer.decode(toks[k:k + 1], skip_special_tokens=True)
        before = smol_tokenizer.decode(toks[:k], skip_special_tokens=True)
        if piece.strip() and full.find(piece) == len(before):
            break
    else:
        pytest.fail(f"no usable stop token in {toks}")
    (res,) = HFGenerator(tiny_lm, smol_tokenizer).generate(
        [GenRequest("r", PROMPTS[1], 0)], SAMPLED.model_copy(update={"stop": (piece,)}))
    assert (res.finish_reason, res.completion_tokens) == ("stop", k + 1)
    assert res.text == before


def test_hf_real_model_stops_at_eos(smol_model_path, smol_tokenizer):
    from rlt_core.modeling import load_causal_lm

    model = load_causal_lm(smol_model_path)
    prompt = smol_tokenizer.apply_chat_template([{"role": "user", "content": "Reply with one word: hello"}],
                                                tokenize=False, add_generation_prompt=True)
    (res,) = HFGenerator(model, smol_tokenizer).generate([GenRequest("r", prompt, 0)],
                                                        SamplingConfig(temperature=0, max_new_tokens=40))
    assert res.finish_reason == "stop" and res.completion_tokens < 40
    assert "<|im_end|>" not in res.text and res.text.strip()


def test_hf_restores_training_mode_and_rejects_bad_requests(tiny_lm, smol_tokenizer):
    gen = HFGenerator(tiny_lm, smol_tokenizer)
    tiny_lm.train()
    gen.generate([GenRequest("r", "hi", 0)], SamplingConfig(max_new_tokens=2))
    assert tiny_lm.training
    with pytest.raises(ValueError, match="duplicate request_id 'a'"):
        gen.generate([GenRequest("a", "x", 0), GenRequest("a", "y", 1)], SamplingConfig())
    with pytest.raises(ValueError, match="'b': empty prompt"):
        gen.generate([GenRequest("b", "", 0)], SamplingConfig())
    with pytest.raises(ValueError, match="'c': seed must be"):
        gen.generate([GenRequest("c", "x", -1)], SamplingConfig())


# ---------------------------------------------------------------------------------------------------- vLLM client
# Protocol tests: a local http.server stands in for the vLLM endpoint so that the client's own behaviour (payload,
# headers, retries, error reporting, ordering) is checked. It is not a vLLM substitute for generation tests.


class _CompletionsHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            srv.calls.append((self.path, dict(self.headers), body))
            plan = srv.plan.pop(0) if srv.plan else "ok"
        if plan == "drop":  # close without a reply: a transport error for the client
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if isinstance(plan, int):
            return self._send(plan, {"error": {"message": f"injected {plan}"}})
        time.sleep(body["seed"] % 3 * 0.02)  # replies finish out of order
        choice = {"text": f"seed={body['seed']}", "finish_reason": plan if plan != "ok" else "length"}
        if plan == "malformed":
            return self._send(200, {"choices": []})
        self._send(200, {"choices": [choice], "usage": {"prompt_tokens": len(body["prompt"]),
                                                         "completion_tokens": body["max_tokens"]}})

    def _send(self, code, obj):
        send_json(self, code, obj)


@pytest.fixture
def fake_endpoint():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _CompletionsHandler)
    srv.calls, srv.plan, srv.lock = [], [], threading.Lock()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_client_payload_headers_and_order(fake_endpoint):
    srv, url = fake_endpoint
    reqs = [GenRequest(f"q{i}", f"prompt {i}", seed=i) for i in range(7)]
    cfg = SamplingConfig(temperature=0.6, top_p=0.9, max_new_tokens=33, stop=("<|end|>",))
    res = VLLMServerGenerator(url + "/", "served", max_concurrency=4).generate(reqs, cfg)
    assert [r.request_id for r in res] == [r.request_id for r in reqs]
    assert [r.text for r in res] == [f"seed={i}" for i in range(7)]
    assert res[3].prompt_tokens == len("prompt 3") and res[3].completion_tokens == 33
    path, headers, body = next(c for c in srv.calls if c[2]["seed"] == 3)
    assert path == "/v1/completions" and headers["X-Request-Id"] == "q3"
    assert body == {"model": "served", "prompt": "prompt 3", "n": 1, "seed": 3, "temperature": 0.6, "top_p": 0.9,
                    "max_tokens": 33, "stop": ["<|end|>"], "skip_special_tokens": True, "add_special_tokens": False}


def test_client_retries_transient_failures(fake_endpoint):
    srv, url = fake_endpoint
    srv.plan = [503, "drop", 429]
    (res,) = VLLMServerGenerator(url, "m", max_retries=3, backoff_s=0.01).generate(
        [GenRequest("r", "p", 1)], SamplingConfig(max_new_tokens=4))
    assert res.text == "seed=1" and len(srv.calls) == 4


def test_client_gives_up_after_max_retries(fake_endpoint):
    srv, url = fake_endpoint
    srv.plan = [503, 503, 503]
    with pytest.raises(GenerationError, match=r"'r'.*after 3 attempts.*HTTP 503: injected 503"):
        VLLMServerGenerator(url, "m", max_retries=2, backoff_s=0.01).generate([GenRequest("r", "p", 1)],
                                                                               SamplingConfig())
    assert len(srv.calls) == 3


def test_client_does_not_retry_bad_requests(fake_endpoint):
    srv, url = fake_endpoint
    srv.plan = [400]
    with pytest.raises(GenerationError, match=r"'r'.*rejected it, HTTP 400: injected 400"):
        VLLMServerGenerator(url, "m", backoff_s=0.01).generate([GenRequest("r", "p", 1)], SamplingConfig())
    assert len(srv.calls) == 1


@pytest.mark.parametrize("plan, match", [("malformed", "malformed completion reply"),
                                         ("abort", "finish_reason 'abort'")])
def test_client_rejects_bad_replies(fake_endpoint, plan, match):
    srv, url = fake_endpoint
    srv.plan = [plan]
    with pytest.raises(GenerationError, match=match):
        VLLMServerGenerator(url, "m").generate([GenRequest("r", "p", 1)], SamplingConfig())


def test_client_unreachable_server_is_a_clear_error():
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(GenerationError, match=r"failed after 2 attempts; last error: ConnectError"):
        VLLMServerGenerator(f"http://127.0.0.1:{port}", "m", max_retries=1, backoff_s=0.01).generate(
            [GenRequest("r", "p", 1)], SamplingConfig())
