"""RLT reward: hand-computed terms on stub models, batched == looped, edge cases of rlt-method.md 2.4."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from pydantic import ValidationError

from rlt_core.logprobs import plan_forward, token_logprobs
from rlt_core.modeling import tiny_causal_lm
from rlt_core.prompts import PromptStyle, format_teacher_prompt
from rlt_core.reward import RewardConfig, RLTReward, combine
from rlt_core.spans import build_examples, find_sublist

END = "<|end_of_explanation|>"
CASES = [  # (question, stored solution, teacher completion): varied lengths for batching
    ("Compute 5 + 48 - 15.", "We evaluate.\nFirst, 48 - 15 = 33.\nThe answer is \\boxed{38}.",
     "We subtract first: 48 - 15 = 33, then add 5 to get 38.\n\n" + END),
    ("What is 2+2?", "4", "Two plus two makes four.\n\n" + END + "<|im_end|>"),
    ("Name a prime.", "2 is prime.", "A prime has exactly two divisors, and 2 has"),  # no end tag
    ("What is 1+1?", "2", END),  # empty explanation
    ("Compute 6*7.", "6 * 7 = 42", "We know 6 * 7 = 42 so\n\n6 * 7 = 42\n\n" + END),
    ("Compare.", "a >> b", ">> is a shift; so a >> b.\n\n" + END),
    ("Using the numbers [1, 43, 10], make 430.", "10 * 43 * 1 = 430",
     "Multiply 10 by 43 to get 430, then multiply by 1, which keeps 430. " * 4 + "\n\n" + END),
]


class UnigramStub(torch.nn.Module):
    """Context-free LM: the logits at every position are the fixed vector ``bias`` (V,)."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.bias = torch.nn.Parameter(bias.clone())

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.bias.expand(*input_ids.shape, -1))


class RepeatStub(torch.nn.Module):
    """Predicts "the next token repeats the current one": logits[b, i] = beta * onehot(ids[b, i])."""

    def __init__(self, vocab: int, beta: float):
        super().__init__()
        self.vocab, self.beta = vocab, torch.nn.Parameter(torch.tensor(beta))

    def forward(self, input_ids, attention_mask=None, **kwargs):
        return SimpleNamespace(logits=self.beta * torch.nn.functional.one_hot(input_ids, self.vocab).float())


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from a second thread, and idle OpenMP workers spinning on a busy 2-core machine
    make every op many times slower; restored after this module."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _score_all(reward, cases, **kw):
    return reward.score([c[0] for c in cases], [c[1] for c in cases], [c[2] for c in cases], **kw)


@pytest.fixture(scope="module")
def tiny_pair(smol_tokenizer):
    """Teacher and student: two tiny random Llamas on the SmolLM2 vocabulary (shared; tests that change
    a model work on a deep copy)."""
    return tiny_causal_lm(smol_tokenizer, seed=0), tiny_causal_lm(smol_tokenizer, seed=1)


def test_logprob_index_i_minus_1_scores_token_i():
    # ids = 5 5 9 9 9 3; the stub gives logit beta to "same as the current token", 0 elsewhere, so at T:
    #   repeat (ids[p] == ids[p-1]): beta/T - log(e^(beta/T) + V - 1);  otherwise: -log(e^(beta/T) + V - 1).
    # p = 1..5 -> repeat, new, repeat, repeat, new. An off-by-one would see every token as a repeat.
    vocab, beta, temp = 11, 2.0, 0.7
    z = math.log(math.exp(beta / temp) + vocab - 1)
    hi, lo = beta / temp - z, -z
    out = token_logprobs(RepeatStub(vocab, beta), [[5, 5, 9, 9, 9, 3], [9, 9, 4]], [[1, 2, 3, 4, 5], [2, 1]],
                         temperature=temp, batch_size=2)
    torch.testing.assert_close(out[0], torch.tensor([hi, lo, hi, hi, lo], dtype=torch.float64), rtol=0, atol=1e-6)
    # the order follows the requested positions
    torch.testing.assert_close(out[1], torch.tensor([lo, hi], dtype=torch.float64), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="positions"):
        token_logprobs(RepeatStub(vocab, beta), [[1, 2]], [[0]])  # token 0 has no prediction


def test_hand_computed_terms_signs_coefficients_and_temperatures(smol_tokenizer):
    # Unigram stubs: every position has the same logits, so log p(x) = bias[x]/T - Z with Z = logsumexp(bias/T).
    # Student: bias 2 on '7', bias 1 on ' cat'.  Teacher: bias 3 on ' cat'.  Everything else 0.
    # The stubs emit float64 logits, which the softmax keeps, so the check can be tight.
    tok, V = smol_tokenizer, len(smol_tokenizer)
    seven, cat = tok.encode("7"), tok.encode(" cat")
    assert len(seven) == 1 and len(cat) == 1
    s_bias, t_bias = torch.zeros(V, dtype=torch.float64), torch.zeros(V, dtype=torch.float64)
    s_bias[seven[0]], s_bias[cat[0]], t_bias[cat[0]] = 2.0, 1.0, 3.0
    t_T, t_S = 0.7, 0.5  # different temperatures: each model must use its own
    cfg = RewardConfig(teacher_temperature=t_T, student_temperature=t_S)
    reward = RLTReward(UnigramStub(t_bias), UnigramStub(s_bias), tok, cfg)
    b = reward.score(["Q?"], ["7"], ["The cat sat.\n\n" + END])[0]
    K, M = b.n_explanation_tokens, b.n_solution_tokens  # explanation holds ' cat' once, solution holds '7' once
    assert (K, M) == (6, 3)  # '\n' '\n' 'The' ' cat' ' sat' '.'  and  '\n' '\n' '7'
    z_s = math.log(math.exp(2.0 / t_S) + math.exp(1.0 / t_S) + V - 2)
    z_t = math.log(math.exp(3.0 / t_T) + V - 1)
    # Answer terms: M-1 tokens at -z_s, '7' at 2/t_S - z_s.
    lp_mean, lp_min = -z_s + (2.0 / t_S) / M, -z_s
    # KL terms d = l_T - l_S: (z_s - z_t) on K-1 tokens, plus 3/t_T - 1/t_S on ' cat'.
    d_other, d_cat = z_s - z_t, 3.0 / t_T - 1.0 / t_S + z_s - z_t
    kl_mean, kl_max = d_other + (d_cat - d_other) / K, max(d_other, d_cat)
    r_ss = 1.0 * lp_mean + 0.01 * lp_min
    r_kl = 3.0 * kl_mean + 0.03 * kl_max
    expected = dict(answer_logprob_mean=lp_mean, answer_logprob_min=lp_min, kl_mean=kl_mean, kl_max=kl_max,
                    r_ss=r_ss, r_kl=r_kl, reward=r_ss - r_kl, format_penalty=0.0)
    for key, value in expected.items():
        assert getattr(b, key) == pytest.approx(value, abs=1e-9), key
    # k3 estimator: d - 1 + exp(-d) per token before the reductions.
    k3 = lambda d: d - 1 + math.exp(-d)  # noqa: E731
    b3 = RLTReward(reward.teacher, reward.student, tok, cfg.model_copy(update={"use_schulman_kl": True})).score(
        ["Q?"], ["7"], ["The cat sat.\n\n" + END])[0]
    assert b3.kl_mean == pytest.approx(k3(d_other) + (k3(d_cat) - k3(d_other)) / K, abs=1e-9)
    assert b3.kl_max == pytest.approx(max(k3(d_other), k3(d_cat)), abs=1e-9)
    assert b3.r_ss == pytest.approx(b.r_ss, abs=1e-9)


def test_combine_by_hand_and_fills():
    cfg = RewardConfig()
    # r_ss = -0.5 + 0.01 * -4 = -0.54; r_kl = 3 * 0.2 + 0.03 * 3 = 0.69; reward = -0.54 - 0.69 - 1
    assert combine(-0.5, -4.0, 0.2, 3.0, -1.0, cfg) == pytest.approx((-2.23, -0.54, 0.69))
    # NaN reductions (empty spans) -> -1 for answer terms, +1 for KL terms: r_ss = -1.01, r_kl = 3.03
    nan = float("nan")
    assert combine(nan, nan, nan, nan, 0.0, cfg) == pytest.approx((-4.04, -1.01, 3.03))
    other = RewardConfig(answer_coef=(2.0, 0.0), kl_coef=(0.0, 1.0), not_matched_penalty=-5.0)
    assert combine(nan, -3.0, 0.2, nan, 0.0, other) == pytest.approx((-15.0, -10.0, 5.0))


def test_batched_equals_looped_and_hidden_gather_equals_full_logits(smol_tokenizer, tiny_pair):
    teacher, student = tiny_pair
    reward = RLTReward(teacher, student, smol_tokenizer, RewardConfig(batch_size=3))
    batched = _score_all(reward, CASES)
    looped = [_score_all(reward, [c], batch_size=1)[0] for c in CASES]
    plain = _score_all(RLTReward(teacher, student, smol_tokenizer,
                                 RewardConfig(gather_hidden=False, share_prefix=False)), CASES)
    plan = reward._plan(teacher)  # the tiny Llama takes both shortcuts; `plain` takes neither
    assert plan.head is not None and plan.share_prefix
    for a, b, c in zip(batched, looped, plain):
        for key, value in a.to_dict().items():
            assert value == pytest.approx(getattr(b, key), abs=1e-4), key
            assert value == pytest.approx(getattr(c, key), abs=1e-4), key


def test_shared_prompts_run_once_and_change_nothing(smol_tokenizer, tiny_pair):
    # GRPO / score-stage shape: several completions of one question share the whole prompt, which is run once
    # per batch (its KV cache repeated over the rows). Values must equal the one-at-a-time ones.
    q, s, _ = CASES[0]
    cases = [(q, s, f"Step {i}: " + "we add and subtract. " * i + "\n\n" + END) for i in range(1, 6)] + CASES[:2]
    reward = RLTReward(*tiny_pair, smol_tokenizer, RewardConfig(batch_size=4))
    batched = _score_all(reward, cases)
    for case, b in zip(cases, batched):
        one = _score_all(reward, [case], batch_size=1)[0]
        for key, value in b.to_dict().items():
            assert value == pytest.approx(getattr(one, key), abs=1e-4), key


def test_unusual_architecture_falls_back_to_full_logits(smol_tokenizer, tiny_pair):
    # A model whose forward post-processes the lm_head output (here: logits * 3, like logit scaling) must not
    # take the hidden-state shortcut; the probe detects it and the reward equals the plain computation.
    from transformers import LlamaForCausalLM

    class Scaled(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits * 3
            return out

    scaled = Scaled(tiny_pair[0].config)
    scaled.load_state_dict(tiny_pair[0].state_dict())
    assert plan_forward(scaled).head is None and plan_forward(tiny_pair[0]).head is not None
    fast = _score_all(RLTReward(scaled.eval(), tiny_pair[1], smol_tokenizer), CASES[:3])
    plain = _score_all(RLTReward(scaled, tiny_pair[1], smol_tokenizer,
                                 RewardConfig(gather_hidden=False, share_prefix=False)), CASES[:3])
    for a, b in zip(fast, plain):
        assert a.reward == pytest.approx(b.reward, abs=1e-4)


def test_matches_direct_full_forward_slicing(smol_tokenizer, tiny_pair):
    # Independent computation for one example: full logits of one sequence, log_softmax(z/T), shift by one,
    # slice the spans, reduce. Must equal the batched, gathered computation.
    teacher, student = tiny_pair
    q, s, c = CASES[0]
    ex = build_examples(smol_tokenizer, [q], [s], [c], PromptStyle())[0]
    b = RLTReward(teacher, student, smol_tokenizer).score([q], [s], [c])[0]

    def lp(model, ids, span, temp):
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        logp = torch.log_softmax(logits / temp, -1)
        return torch.stack([logp[p - 1, ids[p]] for p in range(*span)])

    sol = lp(student, ex.student_ids, ex.solution_span, 0.7)
    d = lp(teacher, ex.teacher_ids, ex.teacher_span, 0.7) - lp(student, ex.student_ids, ex.student_thought_span, 0.7)
    assert b.answer_logprob_mean == pytest.approx(sol.mean().item(), abs=1e-5)
    assert b.answer_logprob_min == pytest.approx(sol.min().item(), abs=1e-5)
    assert b.kl_mean == pytest.approx(d.mean().item(), abs=1e-5)
    assert b.kl_max == pytest.approx(d.max().item(), abs=1e-5)
    assert (b.n_explanation_tokens, b.n_solution_tokens) == (len(d), len(sol))


def test_missing_end_tag_is_scored_with_penalty(smol_tokenizer, tiny_pair):
    # The reference appends the end tag and scores as usual, so the only change is the -1.
    reward = RLTReward(*tiny_pair, smol_tokenizer)
    q, s, c = CASES[2]
    cut, closed = reward.score([q, q], [s, s], [c, c + END])
    assert cut.format_penalty == -1.0 and closed.format_penalty == 0.0
    assert cut.n_explanation_tokens == closed.n_explanation_tokens > 0
    assert cut.reward == pytest.approx(closed.reward - 1.0, abs=1e-6)
    assert cut.r_kl == pytest.approx(closed.r_kl, abs=1e-6)


def test_empty_explanation_gets_kl_fill(smol_tokenizer, tiny_pair):
    reward = RLTReward(*tiny_pair, smol_tokenizer)
    for completion in (END, "\n\n" + END):
        b = reward.score(["What is 1+1?"], ["2"], [completion])[0]
        assert b.n_explanation_tokens == 0 and b.n_solution_tokens > 0
        assert (b.kl_mean, b.kl_max, b.r_kl) == (1.0, 1.0, pytest.approx(3.03))
        assert b.reward == pytest.approx(b.r_ss - 3.03)


def test_solution_repeated_in_explanation_uses_last_occurrence(smol_tokenizer):
    q, s, c = CASES[4]
    ex = build_examples(smol_tokenizer, [q], [s], [c], PromptStyle())[0]
    sol = ex.student_ids[slice(*ex.solution_span)]
    thought = ex.student_ids[slice(*ex.student_thought_span)]
    assert find_sublist(thought, sol) is not None  # the same tokens occur inside the explanation ...
    assert ex.solution_span[0] >= ex.student_thought_span[1]  # ... but the span scored is the real solution
    assert smol_tokenizer.decode(sol).strip() == s


@pytest.mark.parametrize("padding, completion, dropped", [
    ("", ">> is a shift; so a >> b\n" + END, "first"),  # no padding: '|>' + '>>' merge into '>>>'
    ("\n\n", "there are trailing spaces  " + END, "last"),  # '  ' + '<' merge into ' ' + ' <'
    ("", ">> is a shift; so a >> b." + END, "both"),  # ... and '.' + '<' merge into '.<'
])
def test_boundary_merges_drop_a_token_and_keep_spans_equal(smol_tokenizer, padding, completion, dropped):
    ex = build_examples(smol_tokenizer, ["q"], ["s"], [completion], PromptStyle(padding=padding))[0]
    alone = smol_tokenizer.encode(ex.explanation, add_special_tokens=False)
    t = ex.teacher_ids[slice(*ex.teacher_span)]
    assert t == ex.student_ids[slice(*ex.student_thought_span)]
    assert t == {"first": alone[1:], "last": alone[:-1], "both": alone[1:-1]}[dropped]


def test_explanation_found_in_assistant_turn_not_system_prompt(smol_tokenizer):
    # Without padding the explanation ' thinking process' also occurs in the student system prompt
    # ("long thinking process"); the reference takes that first occurrence, we search the assistant turn.
    style = PromptStyle(padding="")
    ex = build_examples(smol_tokenizer, ["q"], ["s"], [" thinking process" + END], style)[0]
    tokens = ex.student_ids[slice(*ex.student_thought_span)]
    assert smol_tokenizer.decode(tokens) == " thinking process"
    assert find_sublist(ex.student_ids, tokens) < ex.student_thought_span[0]  # an earlier, wrong occurrence
    assert ex.student_chat.index("<|im_start|>assistant") < len(smol_tokenizer.decode(
        ex.student_ids[:ex.student_thought_span[0]]))


def test_over_long_sequences_are_penalised_not_run(smol_tokenizer, tiny_pair):
    b = RLTReward(*tiny_pair, smol_tokenizer, RewardConfig(max_length=64)).score(*zip(CASES[0]))[0]
    assert (b.n_explanation_tokens, b.n_solution_tokens) == (0, 0)
    assert (b.r_ss, b.r_kl, b.reward) == pytest.approx((-1.01, 3.03, -4.04))


def test_teacher_is_used_as_is_and_mode_restored(smol_tokenizer, tiny_pair):
    teacher, student = (copy.deepcopy(m) for m in tiny_pair)
    teacher.train()
    reward = RLTReward(teacher, student, smol_tokenizer)
    before = reward.score(*zip(CASES[0]))[0]
    assert teacher.training and not student.training
    assert all(p.grad is None for p in teacher.parameters())
    with torch.no_grad():  # an optimizer step on the live policy: the next score must see it
        for p in teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    after = reward.score(*zip(CASES[0]))[0]
    assert after.kl_mean != pytest.approx(before.kl_mean, abs=1e-4)
    assert after.r_ss == pytest.approx(before.r_ss, abs=1e-9)  # the student did not change


def test_bf16_models(smol_tokenizer, tiny_pair):
    fp32 = _score_all(RLTReward(*tiny_pair, smol_tokenizer), CASES[:3])
    bf16 = _score_all(RLTReward(*(copy.deepcopy(m).to(torch.bfloat16) for m in tiny_pair), smol_tokenizer),
                      CASES[:3])
    for a, b in zip(fp32, bf16):
        assert math.isfinite(b.reward) and b.reward == pytest.approx(a.reward, abs=0.05)


def test_combine_reproduces_and_reweights_ledger_rows(smol_tokenizer, tiny_pair):
    out = _score_all(RLTReward(*tiny_pair, smol_tokenizer), CASES)
    other = RewardConfig(answer_coef=(1.0, 0.1), kl_coef=(0.5, 0.0))
    rescored = _score_all(RLTReward(*tiny_pair, smol_tokenizer, other), CASES)
    for b, r in zip(out, rescored):
        terms = (b.answer_logprob_mean, b.answer_logprob_min, b.kl_mean, b.kl_max, b.format_penalty)
        assert combine(*terms, RewardConfig()) == pytest.approx((b.reward, b.r_ss, b.r_kl), abs=1e-9)
        assert combine(*terms, other) == pytest.approx((r.reward, r.r_ss, r.r_kl), abs=1e-6)


def test_trl_reward_func_contract(smol_tokenizer, tiny_pair):
    reward = RLTReward(*tiny_pair, smol_tokenizer)
    f = reward.as_trl_reward_func()
    assert f.__name__ == "rlt_reward"
    qs, ss, cs = (list(x) for x in zip(*CASES[:3]))
    prompts = [format_teacher_prompt(smol_tokenizer, q, s) for q, s in zip(qs, ss)]
    logged = {}
    values = f(prompts=prompts, completions=cs, question=qs, solution=ss, completion_ids=None,
               trainer_state=None, log_metric=lambda k, v: logged.setdefault(k, v))
    direct = reward.score(qs, ss, cs)
    assert values == pytest.approx([b.reward for b in direct], abs=1e-6)
    assert all(isinstance(v, float) for v in values)
    assert [b.reward for b in f.last_breakdowns] == values
    assert logged["rlt/r_kl"] == pytest.approx(sum(b.r_kl for b in direct) / 3, abs=1e-6)
    conversational = f(prompts=prompts, completions=[[{"role": "assistant", "content": c}] for c in cs],
                       question=qs, solution=ss)
    assert conversational == pytest.approx(values, abs=1e-6)
    with pytest.raises(KeyError, match="solution"):
        f(prompts=prompts, completions=cs, question=qs)
    with pytest.raises(ValueError, match="row 1"):
        f(prompts=[prompts[0], "not a teacher prompt", prompts[2]], completions=cs, question=qs, solution=ss)


def test_bad_inputs_name_the_problem(smol_tokenizer, tiny_pair):
    reward = RLTReward(*tiny_pair, smol_tokenizer)
    with pytest.raises(ValueError, match="2 questions"):
        reward.score(["a", "b"], ["s"], ["c"])
    with pytest.raises(TypeError, match="row 0: completion"):
        reward.score(["a"], ["s"], [None])
    assert reward.score([], [], []) == []


def test_reward_config_is_strict_and_digested():
    cfg = RewardConfig()
    assert (cfg.answer_coef, cfg.kl_coef, cfg.teacher_temperature, cfg.student_temperature) == (
        (1.0, 0.01), (3.0, 0.03), 0.7, 0.7)
    assert cfg.digest() == RewardConfig.model_validate_json(cfg.model_dump_json()).digest()
    assert cfg.digest() != RewardConfig(kl_coef=(3.0, 0.0)).digest()
    assert cfg.digest() != RewardConfig(prompt_style=PromptStyle.r1()).digest()
    with pytest.raises(ValidationError):
        RewardConfig(kl_coeff=(1.0, 0.0))
    with pytest.raises(ValidationError):
        RewardConfig(teacher_temperature=0)
