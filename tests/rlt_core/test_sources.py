"""Ingest sources: every file type and layout, every quarantine reason, ids, dedup keys and splits."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from data_contracts import problems as problems_contract
from data_contracts import quarantine as quarantine_contract
from rlt_core.sources import (
    ProblemRecord,
    Quarantine,
    RawRowError,
    SourceError,
    SourceSpec,
    assign_split,
    dedup_key,
    iter_raw_rows,
    normalise_row,
    problem_id,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
REPO = Path(__file__).resolve().parents[2]


def ingest(spec: SourceSpec) -> list:
    return [normalise_row(row, spec, index) for index, row in iter_raw_rows(spec)]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def sharegpt(user="What is 2+2?", assistant=None, roles=("user", "assistant")):
    if assistant is None:
        assistant = ("<|begin_of_thought|>\n\nAdd them: 4.\n\n<|end_of_thought|>\n\n"
                     "<|begin_of_solution|>\n\n\\boxed{4}\n\n<|end_of_solution|>")
    return {"system": "sys", "conversations": [{"from": roles[0], "value": user},
                                               {"from": roles[1], "value": assistant}]}


def only(results: list):
    assert len(results) == 1, results
    return results[0]


# ---------------------------------------------------------------- layouts


def test_bespoke_sharegpt_fixture_extracts_question_solution_and_trace():
    spec = SourceSpec(uri=str(FIXTURES / "bespoke_stratos_sample.jsonl"))
    records = ingest(spec)
    assert all(isinstance(r, ProblemRecord) for r in records) and len(records) == 3
    first = records[0]
    assert first.question.startswith("Return your final response within \\boxed{}. What is the sum")
    assert first.solution.startswith("The positive divisors of 12") and first.solution.endswith("\\]")
    assert first.reasoning_trace.startswith("Okay, the divisors") and first.reasoning_trace.endswith("= 28.")
    assert first.source == spec.uri and [r.source_row for r in records] == [0, 1, 2]
    assert "```python\ndef reverse(s):\n    return s[::-1]\n```" == records[1].solution  # inner text untouched
    for r in records:
        assert problems_contract.CONTRACT.validate_row(r.to_row("train")) == []


def test_explicit_sharegpt_layout_accepts_role_content_keys():
    row = {"conversations": [{"role": "human", "content": "Q?"},
                             {"role": "gpt", "content": "<|begin_of_solution|> S <|end_of_solution|>"}]}
    rec = normalise_row(row, SourceSpec(uri="x.jsonl", layout="sharegpt"), 0)
    assert (rec.question, rec.solution, rec.reasoning_trace) == ("Q?", "S", None)


@pytest.mark.parametrize("row, reason, field", [
    (sharegpt(roles=("assistant", "user")), "unparseable_layout", "conversations"),
    (sharegpt(assistant="just an answer, no tags"), "unparseable_layout", "conversations"),
    (sharegpt(assistant="<|begin_of_solution|>\n\n  \n<|end_of_solution|>"), "unparseable_layout", "conversations"),
    ({"conversations": [{"from": "user", "value": "Q?"}]}, "unparseable_layout", "conversations"),
    ({"conversations": "Q? A!"}, "wrong_type", "conversations"),
    (sharegpt(user=""), "empty_field", "question"),
    (sharegpt(user=None), "missing_field", "question"),
])
def test_sharegpt_bad_rows_are_quarantined(row, reason, field):
    q = normalise_row(row, SourceSpec(uri="bespoke.jsonl"), 5)
    assert isinstance(q, Quarantine) and (q.reason, q.field) == (reason, field), q
    assert q.source_row == 5 and q.detail
    assert quarantine_contract.CONTRACT.validate_row(q.to_row()) == []
    assert json.loads(q.raw)["conversations"] == row["conversations"]


def test_rlt_custom_reads_question_or_prompt_and_optional_fields():
    spec = SourceSpec(uri="custom.jsonl")
    rec = normalise_row({"question": " Q1 ", "solution": "S1", "reasoning_trace": "T1", "answer": 42}, spec, 0)
    assert (rec.question, rec.solution, rec.reasoning_trace, rec.answer) == ("Q1", "S1", "T1", "42")
    # The official RLT code reads `prompt`, the README says `question`: both work.
    rec = normalise_row({"prompt": "Q2", "solution": "S2"}, spec, 1)
    assert (rec.question, rec.reasoning_trace, rec.answer) == ("Q2", None, None)


def test_columns_mapping_layout_and_auto_prefers_columns_when_given():
    row = {"problem": "What is 3*3?", "worked": "3*3 = 9", "final": "9", "extra": [1, 2]}
    for layout in ("columns", "auto"):
        spec = SourceSpec(uri="m.jsonl", layout=layout,
                          columns={"question": "problem", "solution": "worked", "answer": "final"})
        rec = normalise_row(row, spec, 0)
        assert (rec.question, rec.solution, rec.answer, rec.reasoning_trace) == ("What is 3*3?", "3*3 = 9", "9", None)


def test_spec_is_strict():
    with pytest.raises(ValidationError, match="unknown field"):
        SourceSpec(uri="a.jsonl", columns={"questoin": "q"})
    with pytest.raises(ValidationError, match="needs columns"):
        SourceSpec(uri="a.jsonl", layout="columns", columns={"question": "q"})
    with pytest.raises(ValidationError):
        SourceSpec(uri="a.jsonl", layot="auto")
    with pytest.raises(ValidationError):
        SourceSpec(uri="a.jsonl", layout="alpaca")


# ---------------------------------------------------------------- quarantine reasons


@pytest.mark.parametrize("row, reason, field", [
    ({"question": "Q"}, "missing_field", "solution"),
    ({"question": "Q", "solution": None}, "missing_field", "solution"),
    ({"question": "   \n", "solution": "S"}, "empty_field", "question"),
    ({"question": "Q", "solution": ["S"]}, "wrong_type", "solution"),
    ({"question": 7, "solution": "S"}, "wrong_type", "question"),
    ({"question": "Q", "solution": "S", "reasoning_trace": {"a": 1}}, "wrong_type", "reasoning_trace"),
    ({"question": "Q", "solution": "x" * 101}, "oversized", "solution"),
    ({"title": "Q", "body": "S"}, "unparseable_layout", ""),
    ({"question": "Q\ud800", "solution": "S"}, "undecodable", "question"),
    ({"question": "Q", "solution": "S", "meta": {"k": "\udfff"}}, "undecodable", "meta"),
    ({"question": "Q <|begin_of_explanation|>", "solution": "S"}, "reserved_tag", "question"),
    ({"question": "Q", "solution": "<think>S</think>"}, "reserved_tag", "solution"),
    ({"question": "Q", "solution": "S", "reasoning_trace": "a <|END_OF_THOUGHT|> b"}, "reserved_tag",
     "reasoning_trace"),
])
def test_each_quarantine_reason(row, reason, field):
    q = normalise_row(row, SourceSpec(uri="d.jsonl", max_field_chars=100), 3)
    assert isinstance(q, Quarantine), q
    assert (q.reason, q.field) == (reason, field)
    assert q.detail and q.source == "d.jsonl" and q.source_row == 3
    assert quarantine_contract.CONTRACT.validate_row(q.to_row()) == []


def test_sharegpt_size_limit_applies_to_each_extracted_part():
    long_trace = sharegpt(assistant="<|begin_of_thought|>" + "t" * 80 + "<|end_of_thought|>"
                          "<|begin_of_solution|>" + "s" * 40 + "<|end_of_solution|>")
    spec = SourceSpec(uri="b.jsonl", max_field_chars=60)
    q = normalise_row(long_trace, spec, 0)
    assert (q.reason, q.field) == ("oversized", "reasoning_trace")
    rec = normalise_row(long_trace, spec.model_copy(update={"max_field_chars": 100}), 0)
    assert len(rec.reasoning_trace) == 80 and len(rec.solution) == 40  # the 130-char turn itself is fine


def test_default_size_limit_is_50k_chars():
    assert normalise_row({"question": "Q", "solution": "x" * 50_000}, SourceSpec(uri="d.jsonl"), 0).solution
    too_big = normalise_row({"question": "Q", "solution": "x" * 50_001}, SourceSpec(uri="d.jsonl"), 0)
    assert too_big.reason == "oversized" and "50001 chars > limit 50000" in too_big.detail


def test_jsonl_bad_lines_become_rows_not_crashes(tmp_path):
    good = {"question": "Q", "solution": "S"}
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(json.dumps(good).encode() + b"\n" + b'{"question": "caf\xe9", "solution": "S"}\n' + b"\n"
                     + b'{"question": "Q", "solution": \n' + b"[1, 2]\n" + json.dumps(good).encode() + b"\n")
    results = ingest(SourceSpec(uri=str(path)))
    got = [(r.source_row, getattr(r, "reason", "ok")) for r in results]
    assert got == [(0, "ok"), (1, "undecodable"), (3, "undecodable"), (4, "wrong_type"), (5, "ok")]
    # the Latin-1 byte is found in the value it sits in: the quarantine names the field and the byte
    assert results[1].field == "question" and "0xE9" in results[1].detail and "UTF-8" in results[1].detail
    assert "line 4" in results[2].detail and "invalid JSON" in results[2].detail
    for q in results[1:4]:
        assert quarantine_contract.CONTRACT.validate_row(q.to_row()) == []


def test_csv_undecodable_and_ragged_rows_are_per_row(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes(b'question,solution\n"What is\n1+1?",2\nbad\xff,3\nQ,S,extra\nQ3,\n')
    results = ingest(SourceSpec(uri=str(path)))
    assert results[0].question == "What is\n1+1?" and results[0].solution == "2"
    assert [getattr(r, "reason", "ok") for r in results] == ["ok", "undecodable", "unparseable_layout", "empty_field"]


# ---------------------------------------------------------------- file types


def test_json_list_and_data_wrapper(tmp_path):
    rows = [{"question": f"Q{i}", "solution": f"S{i}"} for i in range(3)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "b.json").write_text(json.dumps({"data": rows + ["not a row"]}))
    a = ingest(SourceSpec(uri=str(tmp_path / "a.json")))
    b = ingest(SourceSpec(uri=str(tmp_path / "b.json")))
    assert [r.question for r in a] == ["Q0", "Q1", "Q2"]
    assert [r.question for r in b[:3]] == ["Q0", "Q1", "Q2"] and b[3].reason == "wrong_type"


def test_parquet_is_read_in_batches_with_global_row_indices(tmp_path):
    n = 2500  # > one 1024-row batch
    table = pa.table({"question": [f"Q{i}" for i in range(n)], "solution": [f"S{i}" for i in range(n)]})
    pq.write_table(table, tmp_path / "p.parquet", row_group_size=700)
    rows = list(iter_raw_rows(SourceSpec(uri=str(tmp_path / "p.parquet"))))
    assert [i for i, _ in rows] == list(range(n))
    assert rows[2499][1] == {"question": "Q2499", "solution": "S2499"}


def test_limit_and_builtin_source():
    spec = SourceSpec(uri="builtin:arithmetic", n=50, seed=3, limit=5)
    records = ingest(spec)
    assert len(records) == 5 and all(r.task == "arithmetic" for r in records)
    assert records[0].answer == re.search(r"\\boxed\{(-?\d+)\}", records[0].solution).group(1)
    assert records[0].meta["expression"] in records[0].question
    row = records[0].to_row("heldout")
    assert problems_contract.CONTRACT.validate_row(row) == [] and json.loads(row["meta_json"]) == records[0].meta
    countdown = ingest(SourceSpec(uri="builtin:countdown", n=3, seed=1))
    assert [r.meta["target"] for r in countdown] and countdown[0].task == "countdown"
    with pytest.raises(SourceError, match="builtin:sudoku"):
        list(iter_raw_rows(SourceSpec(uri="builtin:sudoku")))


# ---------------------------------------------------------------- not a dataset at all

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


@pytest.mark.parametrize("name, content, message", [
    ("image.parquet", PNG, "not a Parquet file"),
    ("noise.parquet", os.urandom(3000), "not a Parquet file"),
    ("empty.parquet", b"", "empty"),
    ("image.jsonl", PNG, "binary file"),
    ("empty.jsonl", b"\n\n  \n", "file is empty"),
    ("scalar.json", b"42", "top-level JSON value is a int"),
    ("object.json", b'{"rows": []}', "top-level JSON value is a dict"),
    ("broken.json", b'[{"a": 1}', "not valid JSON"),
    ("empty.csv", b"", "file is empty"),
    ("image.csv", PNG, "binary file"),
    ("notes.txt", b"hello", "unsupported file type '.txt'"),
])
def test_non_datasets_raise_source_error_naming_the_file(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(SourceError, match=re.escape(message)) as info:
        list(iter_raw_rows(SourceSpec(uri=str(path))))
    assert name in str(info.value)


def test_jsonl_without_a_single_object_is_not_a_dataset(tmp_path):
    path = tmp_path / "words.jsonl"
    path.write_text("hello\nworld\n")
    with pytest.raises(SourceError, match="no line holds a JSON object"):
        list(iter_raw_rows(SourceSpec(uri=str(path))))


def test_missing_local_file_or_directory(tmp_path):
    with pytest.raises(SourceError, match="absent.jsonl: no such file"):
        list(iter_raw_rows(SourceSpec(uri=str(tmp_path / "absent.jsonl"))))
    with pytest.raises(SourceError, match="is a directory"):
        list(iter_raw_rows(SourceSpec(uri=str(tmp_path))))


def test_unreachable_hub_dataset_gives_a_clear_error_quickly():
    # In a fresh process: huggingface_hub reads HF_HUB_OFFLINE at import time.
    code = ("from rlt_core.sources import SourceSpec, SourceError, iter_raw_rows\n"
            "try:\n    list(iter_raw_rows(SourceSpec(uri='someone/not-reachable', split='train')))\n"
            "except SourceError as e:\n    print('SOURCE_ERROR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "SOURCE_ERROR" in out.stdout, out.stderr[-2000:]
    assert "someone/not-reachable" in out.stdout and "local .parquet" in out.stdout


def test_raw_row_error_is_passed_through_as_quarantine():
    q = normalise_row(RawRowError("undecodable", "line 9: invalid JSON", "{oops"), SourceSpec(uri="f.jsonl"), 8)
    assert (q.reason, q.detail, q.raw, q.source_row) == ("undecodable", "line 9: invalid JSON", "{oops", 8)


# ---------------------------------------------------------------- identity, dedup, split


def test_problem_id_format_and_normalisation():
    pid = problem_id("What is 1+1?", "2")
    assert re.fullmatch(r"p_[0-9a-f]{16}", pid)
    assert problem_id("What  is 1+1?\n", " 2") == pid  # whitespace
    assert problem_id("What is １+１?", "2") == pid  # NFKC full-width digits
    assert problem_id("What is 1+1?", "3") != pid
    assert problem_id("what is 1+1?", "2") != pid  # case matters for ids (not for dedup)


def test_dedup_key_normalises_case_space_unicode_and_edge_punctuation():
    k = dedup_key("What is 1+1?")
    assert k == "what is 1+1"
    assert dedup_key("  WHAT   is\n1+1 ?? ") == k
    assert dedup_key("“What is １+１?”") == k
    assert dedup_key("What is 1+2?") != k
    assert dedup_key("f(x)=x^2, find f(2).") == "f(x)=x^2, find f(2)"
    assert dedup_key("-5 + 3 = ?") != dedup_key("5 + 3 = ?") and dedup_key("(x+1)") == "(x+1)"
    assert dedup_key("Is 10 50%?") != dedup_key("Is 10 50?")


def test_assign_split_is_deterministic_and_matches_the_fraction():
    ids = [problem_id(f"Q{i}", "S") for i in range(10_000)]
    first = [assign_split(i, 0.1, seed=0) for i in ids]
    assert first == [assign_split(i, 0.1, seed=0) for i in ids]
    share = first.count("heldout") / len(ids)
    assert 0.09 < share < 0.11
    assert first != [assign_split(i, 0.1, seed=1) for i in ids]
    assert {assign_split(i, 0.0, 0) for i in ids[:500]} == {"train"}
    assert {assign_split(i, 1.0, 0) for i in ids[:500]} == {"heldout"}
    # Growing the heldout fraction only moves items train -> heldout (nested splits).
    bigger = [assign_split(i, 0.2, seed=0) for i in ids]
    assert all(b == "heldout" for a, b in zip(first, bigger) if a == "heldout")
    with pytest.raises(ValueError, match="heldout_fraction"):
        assign_split(ids[0], 1.5, 0)


# ---------------------------------------------------------------- hostile inputs (issue 11; corpus: tests/fixtures/bad_inputs)


@pytest.mark.parametrize("text, code", [
    ("What\x00 is 1+1?", "U+0000"),            # NUL
    ("\x1b[31mWhat is 1+1?", "U+001B"),        # ANSI escape
    ("What is \x0crac{1}{2}?", "U+000C"),      # "\frac" unescaped in JSON
    ("\x08oxed{2}", "U+0008"),                 # "\boxed" unescaped in JSON
    ("What is 1+1?\x7f", "U+007F"),
    ("\x93quoted\x94", "U+0093"),              # C1: CP1252 read as Latin-1
])
def test_control_characters_are_quarantined(text, code):
    q = normalise_row({"question": text, "solution": "2"}, SourceSpec(uri="c.jsonl"), 4)
    assert (q.reason, q.field, q.source_row) == ("control_char", "question", 4) and code in q.detail
    if code in ("U+000C", "U+0008"):
        assert "LaTeX" in q.detail, "the likely cause is named"
    rec = normalise_row({"question": "What is\t1+1?\r\nThink.", "solution": "2"}, SourceSpec(uri="c.jsonl"), 0)
    assert rec.question == "What is\t1+1?\r\nThink.", "tab, newline and CR are text"


@pytest.mark.parametrize("value", ["\u200b\u200b", "\ufeff", " \u00a0\u3000 ", "\u200d\u00ad\t"])
def test_invisible_only_fields_are_empty(value):
    q = normalise_row({"question": "Q?", "solution": value}, SourceSpec(uri="w.jsonl"), 0)
    assert (q.reason, q.field) == ("empty_field", "solution")
    assert normalise_row({"question": "Q?", "solution": "\u200bx"}, SourceSpec(uri="w.jsonl"), 0).solution == "\u200bx"


def test_duplicate_keys_are_quarantined_naming_the_column(tmp_path):
    path = tmp_path / "dup.jsonl"
    path.write_text('{"question": "A?", "question": "B?", "solution": "S"}\n'
                    '{"question": "Q?", "solution": "S", "meta": {"x": [{"k": 1, "k": 2}]}}\n'
                    '{"question": "Q?", "solution": "S", "meta": {"k": 1}}\n')
    q0, q1, ok = ingest(SourceSpec(uri=str(path)))
    assert (q0.reason, q0.field) == ("duplicate_key", "question") and "'question' appears more than once" in q0.detail
    assert (q1.reason, q1.field) == ("duplicate_key", "meta") and "'k'" in q1.detail
    assert ok.meta == {"k": 1}
    (tmp_path / "dup.json").write_text('[{"question": "A?", "solution": "S", "solution": "T"}]')
    assert only(ingest(SourceSpec(uri=str(tmp_path / "dup.json")))).field == "solution"


def test_nesting_depth_is_bounded_without_recursion_errors(tmp_path):
    deep: dict = {"leaf": 1}
    for _ in range(150):
        deep = {"k": deep}
    q = normalise_row({"question": "Q?", "solution": "S", "meta": deep}, SourceSpec(uri="d.jsonl"), 0)
    assert (q.reason, q.field) == ("oversized", "meta") and "nested more than 100 levels" in q.detail
    assert len(q.raw) <= 2000
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b'{"question": "Q?", "solution": "S", "meta": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
                     + b'{"question": "Q?", "solution": "S"}\n')
    bad, good = ingest(SourceSpec(uri=str(path)))
    assert (bad.reason, bad.field, bad.source_row) == ("oversized", "", 0) and "nested too deeply" in bad.detail
    assert good.question == "Q?"
    (tmp_path / "deep.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(SourceError, match="deep.json: JSON nested too deeply to parse"):
        list(iter_raw_rows(SourceSpec(uri=str(tmp_path / "deep.json"))))


def test_overlong_jsonl_line_is_one_row_and_not_held_in_memory(tmp_path, monkeypatch):
    import rlt_core.sources as sources_module

    monkeypatch.setattr(sources_module, "_MAX_LINE_BYTES", 1000)
    path = tmp_path / "long.jsonl"
    good = b'{"question": "Q?", "solution": "S"}\n'
    path.write_bytes(good + b"x" * 5000 + b"\n" + good + b"y" * 3000)   # the last line has no newline
    rows = list(iter_raw_rows(SourceSpec(uri=str(path))))
    assert [i for i, _ in rows] == [0, 1, 2, 3]
    assert rows[1][1].reason == "oversized" and "longer than 1000 bytes" in rows[1][1].detail
    assert rows[2][1] == {"question": "Q?", "solution": "S"}, "the line after an overlong one is read"
    assert rows[3][1].reason == "oversized" and len(rows[3][1].raw) <= 2000


def test_bom_on_any_line_and_a_latin1_byte_names_its_field(tmp_path):
    path = tmp_path / "joined.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"question": "Q1?", "solution": "S"}\r\n\xef\xbb\xbf{"question": "Q2?", '
                     b'"solution": "S"}\r\n{"question": "Q3?", "solution": "caf\xe9"}\n')
    a, b, c = ingest(SourceSpec(uri=str(path)))
    assert (a.question, b.question, a.solution) == ("Q1?", "Q2?", "S")
    assert (c.reason, c.field) == ("undecodable", "solution") and "0xE9" in c.detail
    assert quarantine_contract.CONTRACT.validate_row(c.to_row()) == [] and "\\udce9" in c.to_row()["raw"]


def test_number_edge_cases_huge_literals_nan_and_infinity(tmp_path):
    path = tmp_path / "n.jsonl"
    path.write_bytes(b'{"question": "Q?", "solution": "S", "answer": ' + b"9" * 5000 + b"}\n"
                     b'{"question": "Q?", "solution": "S", "answer": NaN, "meta": {"s": NaN, "t": -Infinity}}\n'
                     b'{"question": "Q?", "solution": "S", "answer": Infinity}\n')
    big, nan, inf = ingest(SourceSpec(uri=str(path)))
    assert big.reason == "undecodable" and "4300 digits" in big.detail
    assert nan.answer is None and json.loads(nan.to_row("train")["meta_json"]) == {"s": "NaN", "t": "-Infinity"}
    assert (inf.reason, inf.field) == ("wrong_type", "answer")


def test_parquet_duplicate_columns_corrupt_pages_and_unrepresentable_values(tmp_path):
    dup = pa.table([pa.array(["Q"]), pa.array(["S"]), pa.array(["Q2"])], names=["question", "solution", "question"])
    pq.write_table(dup, tmp_path / "dup.parquet")
    with pytest.raises(SourceError, match=re.escape("names column(s) ['question'] more than once")):
        list(iter_raw_rows(SourceSpec(uri=str(tmp_path / "dup.parquet"))))
    table = pa.table({"question": [f"What is {i}?" for i in range(300)], "solution": [str(i) for i in range(300)]})
    pq.write_table(table, tmp_path / "ok.parquet", compression="snappy")
    data = bytearray((tmp_path / "ok.parquet").read_bytes())
    col = pq.ParquetFile(tmp_path / "ok.parquet").metadata.row_group(0).column(0)
    start = col.dictionary_page_offset or col.data_page_offset
    data[start + 20: start + col.total_compressed_size - 5] = b"\xab" * (col.total_compressed_size - 25)
    (tmp_path / "corrupt.parquet").write_bytes(bytes(data))
    with pytest.raises(SourceError, match="corrupt.parquet: corrupt Parquet data after row 0"):
        list(iter_raw_rows(SourceSpec(uri=str(tmp_path / "corrupt.parquet"))))
    (tmp_path / "cut.parquet").write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(SourceError, match="unreadable Parquet file, truncated or corrupt"):
        list(iter_raw_rows(SourceSpec(uri=str(tmp_path / "cut.parquet"))))
    far = pa.array([0, 253402300800 * 1000 * 5], pa.timestamp("ms"))   # the second is past year 9999
    pq.write_table(pa.table({"question": ["Q1?", "Q2?"], "solution": ["S", "S"], "at": far}), tmp_path / "far.parquet")
    ok, bad = ingest(SourceSpec(uri=str(tmp_path / "far.parquet")))
    assert ok.question == "Q1?" and (bad.reason, bad.field, bad.source_row) == ("wrong_type", "at", 1)


def test_csv_header_naming_a_column_twice_is_not_a_dataset(tmp_path):
    (tmp_path / "d.csv").write_text("question,solution,question\nA?,S,B?\n")
    with pytest.raises(SourceError, match=re.escape("header names column(s) ['question'] more than once")):
        list(iter_raw_rows(SourceSpec(uri=str(tmp_path / "d.csv"))))


def test_paths_that_are_not_regular_files_are_never_opened(tmp_path):
    os.symlink("b.jsonl", tmp_path / "a.jsonl")
    os.symlink("a.jsonl", tmp_path / "b.jsonl")
    os.symlink("gone.jsonl", tmp_path / "dangling.jsonl")
    os.mkfifo(tmp_path / "fifo.jsonl")   # opening it for reading would block forever
    os.symlink("/dev/zero", tmp_path / "zero.jsonl")
    os.symlink("a.jsonl", tmp_path / "loop")   # no suffix: still a local path, not a hub id
    for name, message in [("a.jsonl", "is a symbolic link that loops back on itself"),
                          ("loop", "is a symbolic link that loops back on itself"),
                          ("dangling.jsonl", "is a broken symbolic link (to 'gone.jsonl', which does not exist)"),
                          ("fifo.jsonl", "is not a regular file (a FIFO, socket or device)"),
                          ("zero.jsonl", "is not a regular file (a FIFO, socket or device)")]:
        with pytest.raises(SourceError, match=re.escape(f"{name}: {message}")):
            list(iter_raw_rows(SourceSpec(uri=str(tmp_path / name))))


def test_source_error_is_always_one_printable_line(tmp_path):
    path = tmp_path / "two\nlines\x1b[2J.jsonl"
    path.write_bytes(b"")
    with pytest.raises(SourceError) as info:
        list(iter_raw_rows(SourceSpec(uri=str(path))))
    message = str(info.value)
    assert message.isprintable() and "two\\nlines\\x1b[2J.jsonl: file is empty" in message
    assert str(SourceError("a\nb\ud800")) == "a\\nb\\ud800"


@pytest.mark.parametrize("content, message", [
    ('{"question": "Q?", "solution": "S"}\n'.encode("utf-16"), "looks like UTF-16/UTF-32 text"),
    ('{"question": "Q?", "solution": "S"}\n'.encode("utf-16-le"), "looks like UTF-16/UTF-32 text"),
    (bytes(range(256)) * 8, "looks like a binary file"),
    (b"\x7fELF\x02\x01\x01" + b"\x00" * 300 + b"\x03\x00>\x00" * 50, "looks like a binary file"),
], ids=["utf16-bom", "utf16le-no-bom", "all-byte-values", "elf-header"])
def test_binary_and_utf16_files_are_refused(tmp_path, content, message):
    (tmp_path / "f.jsonl").write_bytes(content)
    with pytest.raises(SourceError, match=re.escape(message)):
        list(iter_raw_rows(SourceSpec(uri=str(tmp_path / "f.jsonl"))))


def test_a_nul_byte_or_a_latin1_line_is_a_row_problem_not_a_binary_file(tmp_path):
    good = b'{"question": "What is 1+1?", "solution": "2"}\n'
    (tmp_path / "f.jsonl").write_bytes(good + b'{"question": "Q\x00?", "solution": "2"}\n' + good
                                       + b'{"question": "Caf\xe9?", "solution": "2"}\n' + good)
    got = [getattr(r, "reason", "ok") for r in ingest(SourceSpec(uri=str(tmp_path / "f.jsonl")))]
    assert got == ["ok", "undecodable", "ok", "undecodable", "ok"]
    (tmp_path / "lead.jsonl").write_bytes(b" " * 20_000 + b"\n" + good)   # leading blank space is not emptiness
    assert [getattr(r, "reason", "ok") for r in ingest(SourceSpec(uri=str(tmp_path / "lead.jsonl")))] == ["ok"]


def test_quarantine_rows_are_always_storable():
    q = Quarantine("duplicate_key", "k\udce9", "key 'k\udce9' twice", "f\ud800.jsonl", 0, "{\udce9}")
    row = q.to_row()
    assert all(isinstance(v, int) or v.encode("utf-8") for v in row.values())
    assert quarantine_contract.CONTRACT.validate_row(row) == [] and row["field"] == "k\\udce9"
