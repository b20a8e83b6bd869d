"""Ingest: read raw rows from a source and normalise them into problem records or quarantine reasons.

Sources: a Hugging Face dataset id (streamed), a local ``.parquet``/``.jsonl``/``.json``/``.csv`` file,
or a built-in generator (``builtin:<kind>``, a kind of :data:`rlt_core.builtin_problems.KINDS`). Layouts:

- ``sharegpt`` (Bespoke-Stratos-17k, rlt-method.md 1.1): ``conversations`` = [user question, assistant
  ``<|begin_of_thought|>…<|end_of_thought|>\\n\\n<|begin_of_solution|>…<|end_of_solution|>``]. The
  solution and the trace are the tag contents with outer whitespace stripped; the prompt formats add
  the ``\\n\\n`` padding back.
- ``rlt_custom``: ``question`` (or ``prompt``, which is what RLT's code actually reads), ``solution``,
  optional ``reasoning_trace`` and ``answer``.
- ``columns``: an explicit mapping from our fields to source columns.
- ``auto``: decided per row from the keys present.

A bad row never stops the ingest and is never dropped silently: it becomes a :class:`Quarantine` with a
reason code, the offending field and the source row. A file that is not a dataset at all raises
:class:`SourceError`, whose message is always one printable line naming the file and what was expected.
tests/fixtures/bad_inputs/MANIFEST.yaml lists the hostile inputs this module is tested against.
"""
from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Optional, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator

from data_contracts.errors import ExpectedError
from rlt_core.builtin_problems import generate

__all__ = ["SourceSpec", "SourceError", "RawRowError", "ProblemRecord", "Quarantine", "iter_raw_rows",
           "normalise_row", "problem_id", "dedup_key", "assign_split", "QUARANTINE_REASONS"]

FIELDS = ("question", "solution", "reasoning_trace", "answer")
QuarantineReason = Literal["missing_field", "empty_field", "wrong_type", "oversized", "undecodable",
                           "unparseable_layout", "reserved_tag", "control_char", "duplicate_key",
                           "contaminated"]   # contaminated: a copy of an evaluation benchmark item (decontam.py)
QUARANTINE_REASONS: tuple[str, ...] = get_args(QuarantineReason)

_THOUGHT_RE = re.compile(r"<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>", re.DOTALL)
_SOLUTION_RE = re.compile(r"<\|begin_of_solution\|>(.*?)<\|end_of_solution\|>", re.DOTALL)
_USER_ROLES, _ASSISTANT_ROLES = ("user", "human"), ("assistant", "gpt")
_RAW_LIMIT = 2000
_FILE_TYPES = (".parquet", ".jsonl", ".json", ".csv")
_BINARY_MAGIC = (b"\x89PNG", b"PAR1", b"PK\x03\x04", b"\x1f\x8b", b"%PDF", b"\xff\xd8\xff", b"GIF8", b"BZh")
_EDGE_PUNCT = " \t\n.,;:!?…\"'`“”‘’«»„"
_LONE_SURROGATE_RE = re.compile("[\ud800-\udfff]")
# C0 controls except tab, newline, carriage return; DEL; C1 controls (mojibake of CP1252 read as Latin-1).
_CONTROL_RE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_JSON_ESCAPES = {"\b": "an unescaped LaTeX \\b... (\\boxed, \\beta) read as the JSON escape \\b?",
                 "\f": "an unescaped LaTeX \\f... (\\frac) read as the JSON escape \\f?"}
_MAX_LINE_BYTES = 64 << 20   # a JSONL line longer than this is quarantined unparsed (memory stays bounded)
_MAX_DEPTH = 100             # nesting depth of one row's values; real rows are < 10 deep
_JSON_TYPES = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
               type(None): "null"}


def shown(text: Any) -> str:
    """``text`` as one printable line: newlines, control characters and lone surrogates (e.g. undecodable
    bytes of a file name) become escapes, so an error message naming a hostile path stays one line."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


class SourceError(ExpectedError, ValueError):
    """The source is missing, unreachable, or not a dataset at all (as opposed to one bad row).

    The message is always a single printable line (the CLI prints it as its one ``rlt: ...`` line)."""

    def __init__(self, message: str):
        super().__init__(shown(message))


@dataclass(frozen=True)
class RawRowError:
    """A row that could not even be read (undecodable bytes, invalid JSON, not an object, a line too long)."""

    reason: QuarantineReason
    detail: str
    raw: str = ""
    field: str = ""


class SourceSpec(BaseModel):
    """Where problems come from and how to read them.

    ``uri``: a Hugging Face dataset id, a local path (``.parquet``, ``.jsonl``, ``.json``, ``.csv``), or
    ``builtin:<kind>`` (:data:`rlt_core.builtin_problems.KINDS`). ``columns`` maps our fields
    (question, solution, reasoning_trace, answer) to source column names (layout ``columns``; with ``auto`` it
    wins when set). ``split``/``subset`` select the HF split/config; ``limit`` caps the rows read; ``n``/``seed`` drive
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
        """A row of the ``quarantine`` contract (``data_contracts.quarantine.QuarantinedRow``); every text is
        storable as UTF-8 (a lone surrogate from a hostile row is written as its escape)."""
        return dict(stage=stage, source=_storable(self.source), source_row=self.source_row, reason=self.reason,
                    field=_storable(self.field), detail=_storable(self.detail), raw=_storable(self.raw))


def _storable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


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
    if suffix not in _FILE_TYPES and not os.path.lexists(path):
        return _hf_rows(spec.uri, spec.subset, spec.split)
    expected = f"expected a {'/'.join(_FILE_TYPES)} file, a Hugging Face dataset id or builtin:<kind>"
    if not path.is_file():
        raise SourceError(f"{spec.uri}: {_not_a_file(path)}; {expected}")
    readers = {".parquet": _parquet_rows, ".jsonl": _jsonl_rows, ".json": _json_rows, ".csv": _csv_rows}
    if suffix not in readers:
        raise SourceError(f"{spec.uri}: unsupported file type {suffix or '(none)'!r}; expected one of {list(readers)}"
                          + (" (decompress it first)" if suffix in (".gz", ".bz2", ".xz", ".zst", ".zip") else ""))
    return readers[suffix](path)


def _not_a_file(path: Path) -> str:
    """Why an existing-or-not path is not a regular file (never opens it: a FIFO or device would block or never end)."""
    if path.is_symlink() and not path.exists():
        try:
            path.resolve(strict=True)
        except RuntimeError:   # Python 3.11: "Symlink loop from ..."
            return "is a symbolic link that loops back on itself"
        except OSError as exc:
            if getattr(exc, "errno", None) == 40:   # ELOOP
                return "is a symbolic link that loops back on itself"
        return f"is a broken symbolic link (to {shown(os.readlink(path))!r}, which does not exist)"
    if path.is_dir():
        return "is a directory"
    if os.path.lexists(path):
        return "is not a regular file (a FIFO, socket or device)"
    return "no such file"


def _open(path: Path, **text_mode):
    """``open`` (binary unless text options are given) with an unreadable file as a :class:`SourceError`."""
    try:
        return open(path, "r" if text_mode else "rb", **text_mode)
    except OSError as exc:
        raise SourceError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


def _utf16_like(head: bytes) -> bool:
    """A UTF-16/32 byte-order mark, or ASCII text with a NUL beside every character (UTF-16 without a BOM)."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return True
    h = head[:64] if len(head) >= 64 else head[:len(head) - len(head) % 2]
    if len(h) < 8:
        return False
    even, odd = h[0::2], h[1::2]
    return (odd.count(0) * 10 >= len(odd) * 9 and even.count(0) == 0) or \
        (even.count(0) * 10 >= len(even) * 9 and odd.count(0) == 0)


def _sniff_text(path: Path, expected: str) -> None:
    with _open(path) as f:
        head = f.read(8192)
        while head and not head.strip():   # leading blank space is not emptiness if something follows it
            head = f.read(8192)
    if not head.strip():
        raise SourceError(f"{path}: file is empty; expected {expected}")
    if head.startswith(_BINARY_MAGIC):
        raise SourceError(f"{path}: looks like a binary file, not {expected}")
    if _utf16_like(head):
        raise SourceError(f"{path}: looks like UTF-16/UTF-32 text; expected {expected} in UTF-8 (re-encode it)")
    # Text has few control bytes and decodes as UTF-8 (a Latin-1 accent here and there is a per-row problem).
    controls = sum(head.count(bytes([b])) for b in (*range(0, 8), *range(14, 27), *range(28, 32), 127))
    undecodable = head[:-4].decode("utf-8", "replace").count("\ufffd")
    if (controls + undecodable) * 10 > len(head):
        raise SourceError(f"{path}: looks like a binary file, not {expected}")


def _json_type(value: Any) -> str:
    return next((name for t, name in _JSON_TYPES.items() if isinstance(value, t) and not
                 (t is int and isinstance(value, bool))), type(value).__name__)


class _DupDict(dict):
    """A JSON object that had a key more than once (json keeps the last value silently)."""

    duplicates: tuple[str, ...] = ()


def _pairs_hook(pairs: list) -> dict:
    obj = dict(pairs)
    if len(obj) == len(pairs):
        return obj
    seen, dups = set(), []
    for k, _ in pairs:
        if k in seen and k not in dups:
            dups.append(k)
        seen.add(k)
    out = _DupDict(obj)
    out.duplicates = tuple(dups)
    return out


def _loads(text: str) -> Any:
    """json.loads that reports duplicate keys (as :class:`_DupDict`) instead of silently keeping the last one."""
    return json.loads(text, object_pairs_hook=_pairs_hook)


def _parse_error(exc: BaseException) -> tuple[QuarantineReason, str]:
    if isinstance(exc, RecursionError):
        return "oversized", "JSON nested too deeply to parse"
    if isinstance(exc, json.JSONDecodeError):
        return "undecodable", f"invalid JSON at char {exc.pos}: {re.sub(r' (starting )?at$', '', exc.msg)}"
    if str(exc).startswith("Exceeds the limit"):   # int("7" * 5000) refuses; so does json
        return "undecodable", "invalid JSON: a number literal of more than 4300 digits"
    return "undecodable", f"invalid JSON: {exc}"


def _lines(f, limit: int) -> Iterator[tuple[bytes, bool]]:
    """``(line, complete)`` for each line; a line longer than ``limit`` bytes yields its first ``limit + 1`` bytes
    and ``complete=False``, and the rest is skipped without being held in memory."""
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        if len(line) <= limit or line.endswith(b"\n"):
            yield line, True
            continue
        while True:   # drain the rest of the overlong line
            more = f.readline(1 << 20)
            if not more or more.endswith(b"\n"):
                break
        yield line, False


def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict | RawRowError]]:
    expected = "JSON Lines (one JSON object per line)"
    _sniff_text(path, expected)
    good = 0
    with _open(path) as f:  # bytes, so one undecodable line is one bad row, not a crash
        for i, (line, complete) in enumerate(_lines(f, _MAX_LINE_BYTES)):
            if complete and not line.strip():
                continue
            shown_raw = line.rstrip(b"\r\n")[:_RAW_LIMIT].decode("utf-8", "replace")
            if not complete:
                yield i, RawRowError("oversized", f"line {i + 1}: longer than {_MAX_LINE_BYTES} bytes; not parsed",
                                     shown_raw)
                continue
            # surrogateescape: a Latin-1/CP1252 byte becomes a lone surrogate in the value it sits in, so the
            # quarantine names that field (reason undecodable) instead of losing the whole line's structure.
            text = line.decode("utf-8", "surrogateescape").lstrip("\ufeff")   # a BOM on any line (cat a b)
            try:
                obj = _loads(text)
            except (ValueError, RecursionError) as exc:   # JSONDecodeError is a ValueError
                reason, why = _parse_error(exc)
                yield i, RawRowError(reason, f"line {i + 1}: {why}", shown_raw)
                continue
            if not isinstance(obj, dict):
                yield i, RawRowError("wrong_type", f"line {i + 1}: expected a JSON object, got {_json_type(obj)}",
                                     shown_raw)
                continue
            good += 1
            yield i, obj
    if good == 0:
        raise SourceError(f"{path}: no line holds a JSON object; expected {expected}")


def _json_rows(path: Path) -> Iterator[tuple[int, dict | RawRowError]]:
    expected = 'a JSON list of objects or {"data": [...]}'
    _sniff_text(path, expected)
    with _open(path) as f:
        blob = f.read()
    try:
        data = _loads(blob.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not valid UTF-8 (byte {exc.start}: {exc.reason}); expected {expected}") from exc
    except RecursionError as exc:
        raise SourceError(f"{path}: JSON nested too deeply to parse; expected {expected}") from exc
    except ValueError as exc:   # JSONDecodeError, or an integer literal of more than 4300 digits
        raise SourceError(f"{path}: not valid JSON ({exc}); expected {expected}") from exc
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        kind = "dict" if isinstance(data, dict) else type(data).__name__
        raise SourceError(f"{path}: top-level JSON value is a {kind}; expected {expected}")
    for i, obj in enumerate(data):
        if isinstance(obj, dict):
            yield i, obj
        else:
            yield i, RawRowError("wrong_type", f"record {i}: expected an object, got {_json_type(obj)}",
                                 _raw_text(obj))


def _csv_rows(path: Path) -> Iterator[tuple[int, dict | RawRowError]]:
    expected = "CSV with a header row"
    _sniff_text(path, expected)
    # Long solutions exceed csv's 128 KiB default field limit; sizes are policed by max_field_chars instead.
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))
    # surrogateescape keeps undecodable bytes as lone surrogates: the row is quarantined naming that field.
    with _open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
        reader = csv.DictReader(f)
        try:
            header = reader.fieldnames
            if not header:
                raise SourceError(f"{path}: no header row; expected {expected}")
            dups = sorted({c for c in header if header.count(c) > 1})
            if dups:
                raise SourceError(f"{path}: the header names column(s) {dups} more than once; expected {expected} "
                                  "of distinct column names")
            for i, row in enumerate(reader):
                if None in row:
                    yield i, RawRowError("unparseable_layout", f"record {i}: {len(header) + len(row[None])} values "
                                         f"for the {len(header)} header columns", _raw_text(
                                             {str(k): v for k, v in row.items()}))
                else:
                    yield i, row
        except csv.Error as exc:
            raise SourceError(f"{path}: CSV parse error near line {reader.line_num}: {exc}") from exc


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict | RawRowError]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with _open(path) as f:
        magic = f.read(4)
    if magic != b"PAR1":
        raise SourceError(f"{path}: not a Parquet file (no PAR1 magic bytes{'; file is empty' if not magic else ''})")
    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"{path}: unreadable Parquet file, truncated or corrupt ({exc})") from exc
    names = pf.schema_arrow.names
    dups = sorted({c for c in names if names.count(c) > 1})
    if dups:   # to_pylist would keep one of them silently
        raise SourceError(f"{path}: Parquet schema names column(s) {dups} more than once; expected distinct names")
    offset = 0
    batches = pf.iter_batches(batch_size=1024)  # bounded memory for large files
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise SourceError(f"{path}: corrupt Parquet data after row {offset} ({exc})") from exc
        if batch is None:
            return
        yield from _batch_rows(batch, offset)
        offset += batch.num_rows


def _batch_rows(batch, offset: int) -> Iterator[tuple[int, dict | RawRowError]]:
    """A record batch as Python rows; a value Python cannot hold (a timestamp past year 9999) fails only its row."""
    import pyarrow as pa

    try:
        rows = batch.to_pylist()
    except (pa.ArrowException, ValueError, OverflowError):
        rows = None
    if rows is not None:
        yield from ((offset + j, row) for j, row in enumerate(rows))
        return
    columns = batch.schema.names
    for j in range(batch.num_rows):
        row, bad = {}, None
        for c, name in enumerate(columns):
            try:
                row[name] = batch.column(c)[j].as_py()
            except (pa.ArrowException, ValueError, OverflowError) as exc:
                bad = bad or (name, f"{type(exc).__name__}: {exc}")
        if bad is None:
            yield offset + j, row
        else:
            yield offset + j, RawRowError("wrong_type", f"record {offset + j}: column {bad[0]!r} holds a value "
                                          f"Python cannot represent ({bad[1]})", _raw_text(row), bad[0])


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
        if isinstance(value, float) and math.isnan(value):   # pandas' missing value in a numeric column
            return _text({}, column, field_name, max_chars, required)
        if isinstance(value, float) and math.isinf(value):
            raise _Reject("wrong_type", field_name, f"column '{column}' is {value}; expected a finite number or text")
        value = str(value)
    if not isinstance(value, str):
        raise _Reject("wrong_type", field_name, f"column '{column}' must be a string, got {type(value).__name__}")
    bad = _LONE_SURROGATE_RE.search(value)
    if bad is not None:   # valid JSON ("\ud800") but no Unicode text: it cannot be hashed, stored or tokenised
        code = ord(bad.group())
        why = (f"the byte 0x{code - 0xDC00:02X} that is not valid UTF-8 (a Latin-1/CP1252 line?) or a lone "
               f"surrogate escape" if 0xDC80 <= code <= 0xDCFF else "a lone surrogate")
        raise _Reject("undecodable", field_name, f"column '{column}' holds {why} (U+{code:04X}) at char "
                      f"{bad.start()}: not encodable as UTF-8")
    ctrl = _CONTROL_RE.search(value)
    if ctrl is not None:   # NUL, ANSI escapes, backspace...: corrupt text, unsafe in terminals and C-string stores
        ch = ctrl.group()
        name = unicodedata.name(ch, "") or {"\x00": "NUL", "\x08": "BACKSPACE", "\x0c": "FORM FEED",
                                             "\x1b": "ESCAPE", "\x7f": "DELETE"}.get(ch, "control")
        hint = f"; {_JSON_ESCAPES[ch]}" if ch in _JSON_ESCAPES else ""
        raise _Reject("control_char", field_name, f"column '{column}' holds the control character U+{ord(ch):04X} "
                      f"({name}) at char {ctrl.start()}; expected text{hint}")
    if len(value) > max_chars:
        raise _Reject("oversized", field_name, f"column '{column}' has {len(value)} chars > limit {max_chars}")
    if _blank(value):
        if required:
            raise _Reject("empty_field", field_name, f"column '{column}' is empty, whitespace or invisible "
                          "characters only")
        return None
    return value.strip()


def _blank(value: str) -> bool:
    """No visible character: whitespace (incl. NBSP, ideographic space) and format characters (zero-width space,
    BOM, joiners, soft hyphen) only."""
    return not value.strip() or all(c.isspace() or unicodedata.category(c) == "Cf" for c in value)


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


def _finite(value: Any) -> Any:
    """NaN/Infinity (valid in Python's JSON and in parquet floats, not in JSON) as the strings JSON tools print."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _meta(value: Any) -> dict:
    """The row's ``meta`` object as plain JSON: timestamps, decimals, bytes become strings (``str``), NaN and
    Infinity the strings ``"NaN"``/``"Infinity"``; anything else that is not a JSON object is ignored, as before;
    text that is not Unicode is a quarantine reason."""
    if not isinstance(value, dict):
        return {}
    try:
        text = json.dumps(_finite(value), sort_keys=True, ensure_ascii=False, default=str, allow_nan=False)
        text.encode("utf-8")
    except UnicodeEncodeError:   # (a ValueError: caught first)
        raise _Reject("undecodable", "meta", "meta holds text that is not valid UTF-8 (an undecodable byte or a "
                      "lone surrogate)") from None
    except (TypeError, ValueError, RecursionError) as exc:
        raise _Reject("wrong_type", "meta",
                      f"meta is not representable as JSON: {type(exc).__name__}: {exc}"[:300]) from exc
    return json.loads(text)


def _raw_text(raw: Any) -> str:
    """The raw row for the quarantine record: JSON when possible, always storable (lone surrogates escaped)."""
    try:
        text = json.dumps(raw, ensure_ascii=False, default=str)
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(raw)
        except RecursionError:
            text = f"<{type(raw).__name__} nested too deeply to show>"
    return text[:_RAW_LIMIT].encode("utf-8", "backslashreplace").decode("utf-8")


def _structure(row: dict) -> None:
    """Reject a row nested deeper than ``_MAX_DEPTH`` or holding an object with a repeated key (which value was
    meant is ambiguous), naming the top-level column it sits in. Iterative: a hostile row cannot recurse us out."""
    if isinstance(row, _DupDict):
        raise _Reject("duplicate_key", str(row.duplicates[0]), f"key {row.duplicates[0]!r} appears more than once "
                      "in the row; which value is meant is ambiguous")
    for column, value in row.items():
        stack = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if depth > _MAX_DEPTH:
                raise _Reject("oversized", str(column), f"column '{column}' is nested more than {_MAX_DEPTH} "
                              "levels deep")
            if isinstance(item, _DupDict):
                raise _Reject("duplicate_key", str(column), f"column '{column}' holds an object whose key "
                              f"{item.duplicates[0]!r} appears more than once; which value is meant is ambiguous")
            if isinstance(item, dict):
                stack.extend((v, depth + 1) for v in item.values())
            elif isinstance(item, (list, tuple)):
                stack.extend((v, depth + 1) for v in item)


def normalise_row(raw: dict | RawRowError, spec: SourceSpec, source_row: int) -> ProblemRecord | Quarantine:
    """Turn one raw row into a :class:`ProblemRecord`, or a :class:`Quarantine` saying why not.

    Args:
        raw: a row from :func:`iter_raw_rows` (a dict, or a :class:`RawRowError` for unreadable rows).
        spec: the source spec (layout, columns, size limit).
        source_row: the row's index in the source, kept for provenance.
    """
    if isinstance(raw, RawRowError):
        return Quarantine(raw.reason, raw.field, raw.detail, spec.uri, source_row, raw.raw[:_RAW_LIMIT])
    if not isinstance(raw, dict):
        return Quarantine("wrong_type", "", f"row must be an object, got {_json_type(raw)}", spec.uri,
                          source_row, _raw_text(raw))
    try:
        _structure(raw)
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
