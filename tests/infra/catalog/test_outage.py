"""An unreachable object store is told apart from other errors, on one line naming the endpoint."""
from __future__ import annotations

import duckdb
from botocore.exceptions import EndpointConnectionError

from infra.catalog.store import outage_message


def test_outage_is_recognised_through_wrappers_and_other_errors_are_not(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:30914")
    try:
        try:
            raise EndpointConnectionError(endpoint_url="http://127.0.0.1:30914/rlt?list-type=2")
        except EndpointConnectionError as inner:
            raise RuntimeError("generate shard 00001 failed") from inner
    except RuntimeError as exc:
        line = outage_message(exc)
    assert line.startswith("object store http://127.0.0.1:30914 unreachable (EndpointConnectionError")
    assert "\n" not in line
    http = duckdb.IOException("IO Error: Could not establish connection error for HTTP HEAD to "
                              "'http://127.0.0.1:30914/rlt/x.parquet'")
    assert outage_message(http).startswith("object store http://127.0.0.1:30914 unreachable (IOException")
    mid_commit = duckdb.IOException("IO Error: Could not connect to server error for HTTP HEAD to "
                                    "'http://127.0.0.1:30914/rlt/factory/x/data-00000.parquet'\n\nLINE 1: ...")
    assert "unreachable" in outage_message(mid_commit) and "LINE 1" not in outage_message(mid_commit)
    # a refused PostgreSQL catalog or any other error is not an object-store outage
    assert outage_message(OSError("connection refused: 127.0.0.1:5432")) is None
    assert outage_message(ValueError("bad value")) is None


def test_outage_line_masks_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://user:hunter2hunter2@127.0.0.1:30914")
    line = outage_message(EndpointConnectionError(endpoint_url="http://user:hunter2hunter2@127.0.0.1:30914/x"))
    assert line and "hunter2" not in line


def test_cli_prints_an_outage_as_one_expected_line(monkeypatch):
    """DuckDB's exceptions live in module ``_duckdb``; the CLI must still recognise the outage behind them."""
    from flows.errors import expected_message as _expected

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:30914")
    exc = duckdb.IOException("IO Error: Could not connect to server error for HTTP HEAD to 'http://127.0.0.1:30914/x'")
    assert _expected(exc).startswith("object store http://127.0.0.1:30914 unreachable")
    assert _expected(KeyError("a bug")) is None
