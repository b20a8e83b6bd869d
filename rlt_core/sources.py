"""Ingest: read raw rows from a source and normalise them into problem records or quarantine reasons.

Sources: a Hugging Face dataset id (streamed), a local ``.parquet``/``.jsonl``/``.json``/``.csv`` file,
or a built-in generator (``builtin:countdown``, ``builtin:arithmetic``). Layouts:

- ``sharegpt`` (Bespoke-Stratos-17k, rlt-method.md 1.1): ``conversations`` = [user question, assistant
  ``<|begin_of_thought|>…<|end_of_thought|>\\n\\n<|begin_of_solution|>…<|end_of_solution|>``]. The
  solution and the trace are the tag contents with outer whitespace stripped; the prompt formats add
  the ``\\n\\n`` padding back.
- ``rlt_custom``: ``question`` (or ``prompt``, which is what RLT's code actually reads), ``solution``,
  optional ``reasoning_trace`` and ``answer``.
- ``columns``: an explicit mapping from our fields to source columns.
- ``auto``: decided per row from the keys present.

A bad row never stops the ingest and is never dropped silently: it becomes a :class:`Quarantine` with a
reason code. A file that is not a dataset at all raises :class:`SourceError`.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rlt_core.builtin_problems import generate

__all__ = ["SourceSpec", "SourceError", "RawRowError", "ProblemRecord", "Quarantine", "iter_raw_rows",
           "normalise_row", "problem_id", "dedup_key", "assign_split", "QUARANTINE_REASONS"]

FIELDS = ("question", "solution", "reasoning_trace", "answer")
QuarantineReason = Literal["missing_field", "empty_field", "wrong_type", "oversized", "undecodable",
                           "unparseable_layout", "reserved_tag"]
QUARANTINE_REASONS: tuple[str, ...] = get_args(QuarantineReason)

_THOUGHT_RE = re.compile(r"<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>", re.DOTALL)
_SOLUTION_RE = re.compile(r"<\|begin_of_solution\|>(.*?)<\|end_of_solution\|>", re.DOTALL)
_USER_ROLES, _ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")
_RAW_LIMIT = 2000
_FILE_TYPES = (".parquet", ".jsonl", ".json", ".csv")
_BINARY_MAGIC = (b"\x89PNG", b"PAR1", b"PK\x03\x04", b"\x1f\x8b", b"%PDF", b"\xff\xd8\xff", b"GIF8", b"BZh")
_EDGE_PUNCT = " \t\n.,;:!?…\"'`“”‘’«»„"
_SURROGATE_RE = re.compile("[\udc80-\udcff]")
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")


class SourceError(ValueError):
    """The source is missing, unreachable, or not a dataset at all (as opposed to one bad row)."""


@dataclass(frozen=True)
class RawRowError:
    """A row that could not even be read (undecodable bytes, invalid JSON, not an object)."""

    reason: QuarantineReason
    detail: str
    raw: str = ""


class SourceSpec(BaseModel):
    """Where problems come from and how to read them.

    ``uri``: a Hugging Face dataset id, a local path (``.parquet``, ``.jsonl``, ``.json``, ``.csv``), or
    ``builtin:countdown`` / ``builtin:arithmetic``. ``columns`` maps our fields (question, solution,
    reasoning_trace, answer) to source column names (layout ``columns``; with ``auto`` it wins when set).
    ``split``/``subset`` select the HF split/config; ``limit`` caps the rows read; ``n``/``seed`` drive
    the built-in generators; ``max_field_chars`` is the per-field size above which a row is quarantined.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    uri: str = Field(min_length=1)
    layout: Literal["auto", "sharegpt", "rlt_custom", "columns"] = "auto"
    columns: dict[str, str] = Field(default_factory=dict)
    split: str = "train"
    subset: Optional[str] = None
    limit: Optional[int] = Field(default=None, ge=1)
    n: int = Field(default=1000, ge=1)
    seed: int = 0
    max_field_chars: int = Field(default=50_000, ge=1)

    @model_validator(mode="after")
    def _check_columns(self) -> "SourceSpec":
        unknown = set(self.columns) - set(FIELDS)
        if unknown:
            raise ValueError(f"columns: unknown field(s) {sorted(unknown)}; expected keys among {list(FIELDS)}")
        if self.layout == "columns" and not {"question", "solution"} <= set(self.columns):
            raise ValueError("layout 'columns' needs columns for at least 'question' and 'solution'")
        return self


@dataclass(frozen=True)
class ProblemRecord:
    """A normalised problem (before the train/heldout split is assigned)."""

    problem_id: str
    source: str
    source_row: int
    question: str
    solution: str
    reasoning_trace: Optional[str] = None
    answer: Optional[str] = None
    task: str = "generic"
    meta: dict = field(default_factory=dict)

    def to_row(self, split: str) -> dict:
        """A row of the ``problems`` contract (``data_contracts.problems.Problem``)."""
        return dict(problem_id=self.problem_id, source=self.source, source_row=self.source_row,
                    question=self.question, solution=self.solution, reasoning_trace=self.reasoning_trace,
                    answer=self.answer, split=split, task=self.task,
                    meta_json=json.dumps(self.meta, sort_keys=True, ensure_ascii=False))


@dataclass(frozen=True)
class Quarantine:
    """A row that could not be used: reason code, offending field, human-readable detail, raw row."""

    reason: QuarantineReason
    field: str
    detail: str
    source: str
    source_row: int
    raw: str = ""

    def to_row(self, stage: str = "ingest") -> dict:
        """A row of the ``quarantine`` contract (``data_contracts.quarantine.QuarantinedRow``)."""
        return dict(stage=stage, source=self.source, source_row=self.source_row, reason=self.reason,
                    field=self.field, detail=self.detail, raw=self.raw)


# --------------------------------------------------------------------------------------------------
# identity, dedup, split


def _norm_text(text: str) -> str:
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text)).strip()


def problem_id(question: str, solution: str) -> str:
    """``"p_"`` + 16 hex chars of the SHA-256 of the NFKC/whitespace-normalised question and solution."""
    payload = _norm_text(question) + "\x1f" + _norm_text(solution)
    return "p_" + hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def dedup_key(question: str) -> str:
    """Normalised question for near-exact dedup: NFKC, lowercase, collapsed whitespace, and no sentence
    punctuation or quotes at either end (brackets, signs and ``%`` are kept: they change the maths)."""
    return _norm_text(question).lower().strip(_EDGE_PUNCT)


def assign_split(problem_id: str, heldout_fraction: float, seed: int) -> Literal["train", "heldout"]:
    """Deterministic train/heldout assignment from a hash of ``(seed, problem_id)``.

    Pass the same key for duplicates (e.g. a hash of :func:`dedup_key`) if two rows with the same question
    must land on the same side; the assignment of an id never depends on which other rows exist.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    digest = hashlib.sha256(f"{seed}:{problem_id}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "heldout" if u < heldout_fraction else "train"


# --------------------------------------------------------------------------------------------------
# reading


def iter_raw_rows(spec: SourceSpec) -> Iterator[tuple[int, dict | RawRowError]]:
    """Yield ``(source_row, row)`` for every raw row; a row that cannot be read is a :class:`RawRowError`.

    ``source_row`` is 0-based: the line index for JSONL (blank lines are skipped but still counted), the
    record index otherwise. Stops after ``spec.limit`` rows.

    Raises:
        SourceError: the source is missing, unreachable, or not a dataset at all.
    """
    for count, item in enumerate(_open_rows(spec)):
        if spec.limit is not None and count >= spec.limit:
            break
        yield item


def _open_rows(spec: SourceSpec) -> Iterator[tuple[int, dict | RawRowError]]:
    if spec.uri.startswith("builtin:"):
        kind = spec.uri.removeprefix("builtin:")
        try:
            problems = generate(kind, spec.n, spec.seed)
        except ValueError as exc:
            raise SourceError(f"{spec.uri}: {exc}") from exc
        return iter(enumerate(problems))
    path = Path(spec.uri).expanduser()
    suffix = path.suffix.lower()
    if suffix not in _FILE_TYPES and not path.exists():
        return _hf_rows(spec.uri, spec.subset, spec.split)
    if not path.is_file():
        raise SourceError(f"{spec.uri}: {'is a directory' if path.is_dir() else 'no such file'}; expected a "
                          f"{'/'.join(_FILE_TYPES)} file, a Hugging Face dataset id or builtin:<kind>")
    readers = {".parquet": _parquet_rows, ".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows}
    if suffix not in readers:
        raise SourceError(f"{spec.uri}: unsupported file type {suffix or '(none)'!r}; expected one of {list(readers)}")
    return readers[suffix](path)


def _sniff_text(path: Path, expected: str) -> None:
    with open(path, "rb") as f:
        head = f.read(8192)
    if not head.strip():
        raise SourceError(f"{path}: file is empty; expected {expected}")
    if head.startswith(_BINARY_MAGIC) or b"\x00" in head:
        raise SourceError(f"{path}: looks like a binary file, not {expected}")


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | RawRowError]]:
    expected = "JSON Lines (one JSON object per line)"
    _sniff_text(path, expected)
    good = 0
    with open(path, "rb") as f:  # bytes, so one undecodable line is one bad row, not a crash
        for i, line in enumerate(f):
            if not line.strip():
                continue
            shown = line.rstrip(b"\r\n")[:_RAW_LIMIT].decode("utf-8", "replace")
            try:
                obj = json.loads(line.decode("utf-8-sig" if i == 0 else "utf-8"))
            except UnicodeDecodeError as exc:
                yield i, RawRowError("undecodable", f"line {i + 1}: not valid UTF-8 ({exc.reason})", shown)
                continue
            except json.JSONDecodeError as exc:
                yield i, RawRowError("undecodable", f"line {i + 1}: invalid JSON ({exc.msg})", shown)
                continue
            if not isinstance(obj, dict):
                yield i, RawRowError("wrong_type", f"line {i + 1}: expected a JSON object, got {type(obj).__name__}",
                                     shown)
                continue
            good += 1
            yield i, obj
    if good == 0:
        raise SourceError(f"{path}: no line holds a JSON object; expected {expected}")


def _json_rows(path: Path) -> Iterator[tuple[int, dict | RawRowError]]:
    expected = 'a JSON list of objects or {"data": [...]}'
    _sniff_text(path, expected)
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SourceError(f"{path}: not valid JSON ({exc}); expected {expected}") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise SourceError(f"{path}: top-level JSON value is a {type(data).__name__}; expected {expected}")
    for i, obj in enumerate(data):
        if isinstance(obj, dict):
            yield i, obj
        else:
            yield i, RawRowError("wrong_type", f"record {i}: expected an object, got {type(obj).__name__}",
                                 _raw_text(obj))


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | RawRowError]]:
    expected = "CSV with a header row"
    _sniff_text(path, expected)
    # Long solutions exceed csv's 128 KiB default field limit; sizes are policed by max_field_chars instead.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # surrogateescape keeps undecodable bytes as lone surrogates, so they flag one row instead of the file.
    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames:
            raise SourceError(f"{path}: no header row; expected {expected}")
        try:
            for i, row in enumerate(reader):
                shown = _raw_text({str(k): v for k, v in row.items()}).encode("utf-8", "replace").decode()
                if None in row:
                    yield i, RawRowError("unparseable_layout", f"record {i}: more values than the "
                                         f"{len(reader.fieldnames)} header columns", shown)
                elif any(isinstance(v, str) and _SURROGATE_RE.search(v) for v in row.values()):
                    yield i, RawRowError("undecodable", f"record {i}: holds bytes that are not valid UTF-8", shown)
                else:
                    yield i, row
        except csv.Error as exc:
            raise SourceError(f"{path}: CSV parse error near line {reader.line_num}: {exc}") from exc


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict | RawRowError]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PAR1":
        raise SourceError(f"{path}: not a Parquet file (no PAR1 magic bytes{'; file is empty' if not magic else ''})")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: unreadable Parquet file ({exc})") from exc
    offset = 0
    for batch in pf.iter_batches(batch_size=1024):  # bounded memory for large files
        for j, row in enumerate(batch.to_pylist()):
            yield offset + j, row
        offset += batch.num_rows


def _hf_rows(uri: str, subset: Optional[str], split: str) -> Iterator[tuple[int, dict | RawRowError]]:
    where = f"Hugging Face dataset {uri!r} (subset={subset}, split={split})"
    try:
        import datasets  # lazy: heavy, and only needed for hub sources

        stream = datasets.load_dataset(uri, subset, split=split, streaming=True)
        for i, row in enumerate(stream):
            yield i, row
    except Exception as exc:  # network, auth, missing split: all mean "this source cannot be read"
        raise SourceError(f"could not read {where}: {type(exc).__name__}: {exc}. Without hub access, point "
                          "uri at a local .parquet/.jsonl/.json/.csv file or a builtin: generator.") from exc


# --------------------------------------------------------------------------------------------------
# normalising


class _Reject(Exception):
    def __init__(self, reason: QuarantineReason, field_name: str, detail: str):
        super().__init__(detail)
        self.reason, self.field_name, self.detail = reason, field_name, detail


def _text(row: dict, column: str, field_name: str, max_chars: int, required: bool = True,
          allow_numbers: bool = False) -> Optional[str]:
    value = row.get(column)
    if value is None:
        if required:
            raise _Reject("missing_field", field_name, f"column '{column}' is missing or null")
        return None
    if allow_numbers and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _Reject("wrong_type", field_name, f"column '{column}' must be a string, got {type(value).__name__}")
    bad = _LONE_SURROGATE_RE.search(value)
    if bad is not None:   # valid JSON ("\ud800") but no Unicode text: it cannot be hashed, stored or tokenised
        raise _Reject("undecodable", field_name, f"column '{column}' holds a lone surrogate "
                      f"U+{ord(bad.group()):04X} at char {bad.start()}: not encodable as UTF-8")
    if len(value) > max_chars:
        raise _Reject("oversized", field_name, f"column '{column}' has {len(value)} chars > limit {max_chars}")
    if not value.strip():
        if required:
            raise _Reject("empty_field", field_name, f"column '{column}' is empty or whitespace")
        return None
    return value.strip()


def _tag(text: str, pattern: re.Pattern, tag: str, field_name: str, max_chars: int) -> Optional[str]:
    found = pattern.search(text)
    if found is None or not found.group(1).strip():
        if field_name == "solution":
            raise _Reject("unparseable_layout", "conversations",
                          f"assistant turn has no non-empty <|begin_of_{tag}|>…<|end_of_{tag}|> block")
        return None
    # The size limit applies to each extracted part, not to the whole assistant turn.
    return _text({tag: found.group(1)}, tag, field_name, max_chars)


def _from_sharegpt(row: dict, max_chars: int) -> dict:
    conv = row.get("conversations")
    if conv is None:
        raise _Reject("missing_field", "conversations", "ShareGPT layout needs a 'conversations' column")
    if not isinstance(conv, list) or not all(isinstance(t, dict) for t in conv):
        raise _Reject("wrong_type", "conversations", f"expected a list of turns, got {type(conv).__name__}")
    if len(conv) < 2:
        raise _Reject("unparseable_layout", "conversations", f"expected [user, assistant] turns, got {len(conv)}")
    roles = [str(t.get("from", t.get("role", ""))).lower() for t in conv[:2]]
    if roles[0] not in _USER_ROLES or roles[1] not in _ASSISTANT_ROLES:
        raise _Reject("unparseable_layout", "conversations", f"expected roles [user, assistant], got {roles}")
    turns = [{"value": t.get("value", t.get("content"))} for t in conv[:2]]
    question = _text(turns[0], "value", "question", max_chars)
    assistant = _text(turns[1], "value", "solution", max_chars=2**62)
    return dict(question=question, solution=_tag(assistant, _SOLUTION_RE, "solution", "solution", max_chars),
                reasoning_trace=_tag(assistant, _THOUGHT_RE, "thought", "reasoning_trace", max_chars))


def _from_columns(row: dict, columns: dict[str, str], max_chars: int) -> dict:
    out = {}
    for name in FIELDS:
        column = columns.get(name)
        required = name in ("question", "solution")
        out[name] = None if column is None else _text(row, column, name, max_chars, required, name == "answer")
    return out


def _from_custom(row: dict, max_chars: int) -> dict:
    qcol = "question" if row.get("question") is not None or "prompt" not in row else "prompt"
    return _from_columns(row, {"question": qcol, "solution": "solution", "reasoning_trace": "reasoning_trace",
                               "answer": "answer"}, max_chars)


def _detect(row: dict, spec: SourceSpec) -> str:
    if spec.layout != "auto":
        return spec.layout
    if spec.columns:
        return "columns"
    if "conversations" in row:
        return "sharegpt"
    if {"question", "prompt", "solution"} & set(row):
        return "rlt_custom"
    raise _Reject("unparseable_layout", "",
                  f"row has keys {sorted(map(str, row))[:20]}; expected 'conversations' (ShareGPT) or "
                  "'question'/'prompt' + 'solution' (RLT custom), or give SourceSpec.columns")


@functools.lru_cache(maxsize=1)
def reserved_tags() -> tuple[str, ...]:
    """The tags of the built-in prompt formats (Stratos ``<|begin_of_x|>``/``<|end_of_x|>`` and R1 ``<think>``,
    ``<answer>``, ``<explanation>``). A field holding one would corrupt the teacher prompt, the completion parser
    and the reward's span search, so such rows are quarantined (reason ``reserved_tag``), not escaped: escaping
    would change the text the student is scored on."""
    from rlt_core.prompts import PromptStyle

    return tuple(t for style in (PromptStyle.stratos(), PromptStyle.r1())
                 for pair in (style.thought_tags, style.solution_tags, style.explanation_tags) for t in pair)


@functools.lru_cache(maxsize=1)
def _reserved_re() -> re.Pattern:
    return re.compile("|".join(re.escape(t) for t in reserved_tags()), re.IGNORECASE)


def _check_reserved(fields: dict) -> None:
    for name in FIELDS:
        found = _reserved_re().search(fields.get(name) or "")
        if found is not None:
            raise _Reject("reserved_tag", name, f"{name} contains the format tag {found.group()!r} at char "
                          f"{found.start()}; it would corrupt the teacher prompt and the reward's span search")


def _meta(value: Any) -> dict:
    """The row's ``meta`` object as plain JSON: timestamps, decimals, bytes become strings (``str``); anything
    else that is not a JSON object is ignored, as before; text that is not Unicode is a quarantine reason."""
    if not isinstance(value, dict):
        return {}
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
        text.encode("utf-8")
    except UnicodeEncodeError:   # (a ValueError: caught first)
        raise _Reject("undecodable", "meta", "meta holds a lone surrogate: not encodable as UTF-8") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise _Reject("wrong_type", "meta", f"meta is not representable as JSON: {type(exc).__name__}: {exc}"[:300])
    return json.loads(text)


def _raw_text(raw: Any) -> str:
    """The raw row for the quarantine record: JSON when possible, always storable (lone surrogates escaped)."""
    try:
        text = json.dumps(raw, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        text = repr(raw)
    return text[:_RAW_LIMIT].encode("utf-8", "backslashreplace").decode("utf-8")


def normalise_row(raw: dict | RawRowError, spec: SourceSpec, source_row: int) -> ProblemRecord | Quarantine:
    """Turn one raw row into a :class:`ProblemRecord`, or a :class:`Quarantine` saying why not.

    Args:
        raw: a row from :func:`iter_raw_rows` (a dict, or a :class:`RawRowError` for unreadable rows).
        spec: the source spec (layout, columns, size limit).
        source_row: the row's index in the source, kept for provenance.
    """
    if isinstance(raw, RawRowError):
        return Quarantine(raw.reason, "", raw.detail, spec.uri, source_row, raw.raw[:_RAW_LIMIT])
    if not isinstance(raw, dict):
        return Quarantine("wrong_type", "", f"row must be an object, got {type(raw).__name__}", spec.uri,
                          source_row, _raw_text(raw))
    try:
        layout = _detect(raw, spec)
        if layout == "sharegpt":
            fields = _from_sharegpt(raw, spec.max_field_chars)
        elif layout == "columns":
            fields = _from_columns(raw, spec.columns, spec.max_field_chars)
        else:
            fields = _from_custom(raw, spec.max_field_chars)
        _check_reserved(fields)
        task = raw.get("task")   # optional; a non-string task is ignored, as before
        task = (_text(raw, "task", "task", spec.max_field_chars, required=False) if isinstance(task, str)
                else None) or "generic"
        meta = _meta(raw.get("meta"))
    except _Reject as rej:
        return Quarantine(rej.reason, rej.field_name, rej.detail, spec.uri, source_row, _raw_text(raw))
    return ProblemRecord(problem_id=problem_id(fields["question"], fields["solution"]), source=spec.uri,
                         source_row=source_row, task=task, meta=meta, **fields)
