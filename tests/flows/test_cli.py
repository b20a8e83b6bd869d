"""The `rlt` CLI on a small real store: catalog ls/sql/snapshots (and the deprecated `manifest`), plan, lineage,
errors, and the parser: every command listed in `rlt --help`."""
from __future__ import annotations

import datetime
import json

import pytest
import yaml

from flows.cli import main
from tests.flows.test_factory import tiny_recipe
from tests.tasks.helpers import setup


@pytest.fixture
def store(tmp_path, tiny_model_dir):
    ctx, problems, teacher = setup(str(tmp_path / "data"), tiny_model_dir, n=5)
    return ctx, problems


def test_catalog_sql_and_ls(store, capsys):
    ctx, problems = store
    assert main(["--data-root", ctx.root, "catalog", "sql",
                 "SELECT name, num_rows FROM artifacts_committed WHERE name = 'problems'", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"name": "problems", "num_rows": 5}]
    assert main(["--data-root", ctx.root, "catalog", "ls"]) == 0
    assert problems.key[:10] in capsys.readouterr().out.replace("\n", "")


def test_catalog_snapshots_and_queries_as_of_one(store, capsys):
    ctx, _ = store
    assert main(["--data-root", ctx.root, "catalog", "snapshots", "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert "snapshots (newest first" in out and "commit train_teacher" in out
    snaps = {r["commit_message"]: r["snapshot_id"] for r in ctx.catalog.rows("SELECT * FROM lake.snapshots()")}
    ingest = next(v for k, v in snaps.items() if (k or "").startswith("commit ingest"))

    def names(*snapshot):   # options between the action and the query, as the help's examples have them
        assert main(["--data-root", ctx.root, "catalog", "sql", *snapshot, "--json",
                     "SELECT name FROM artifacts_committed ORDER BY name"]) == 0
        return [r["name"] for r in json.loads(capsys.readouterr().out)]

    assert names("--snapshot", str(snaps["schema"])) == []
    then = names("--snapshot", str(ingest))
    assert "problems" in then and "teacher_checkpoint" not in then
    assert "teacher_checkpoint" in names()


def test_catalog_info_and_verify_share_the_noun(store, capsys):
    ctx, problems = store
    assert main(["--data-root", ctx.root, "catalog", "info"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["catalog"].startswith("sqlite:") and info["artifacts"] >= 1 and "problems" in info["tables"]
    assert main(["--data-root", ctx.root, "catalog", "verify", "--key", problems.key]) == 0
    assert capsys.readouterr().out.strip().endswith("verified 1 artifact(s): 0 problem(s)")
    assert main(["--data-root", ctx.root, "catalog", "info", "SELECT 1"]) == 2
    assert "only `sql` takes a query" in capsys.readouterr().err


def test_catalog_sql_without_a_query_says_how(tmp_path):
    with pytest.raises(SystemExit, match=r'rlt catalog sql: give a query, e\.g\. rlt catalog sql "SELECT'):
        main(["--data-root", str(tmp_path), "catalog", "sql"])


def test_manifest_is_a_deprecated_alias_of_catalog(store, capsys):
    ctx, problems = store
    assert main(["--data-root", ctx.root, "manifest", "sql",
                 "SELECT name, num_rows FROM artifacts_committed WHERE name = 'problems'", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == [{"name": "problems", "num_rows": 5}]
    assert err.splitlines() == ["rlt: 'rlt manifest' is now 'rlt catalog' (same arguments); 'manifest' will be "
                                "removed"]
    assert main(["--data-root", ctx.root, "manifest", "ls"]) == 0
    out, err = capsys.readouterr()
    assert problems.key[:10] in out.replace("\n", "") and "'rlt manifest' is now 'rlt catalog'" in err
    with pytest.raises(SystemExit) as exc:   # only the read-only actions, as before
        main(["--data-root", ctx.root, "manifest", "verify"])
    assert exc.value.code == 2


COMMANDS = {"factory", "backfill", "run", "plan", "deploy", "serve", "catalog", "lineage", "releases", "promote",
            "rollback", "export", "report", "check", "review", "tracking", "stack", "models"}


def _commands(parser) -> dict:
    import argparse

    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_help_lists_every_command_and_hides_manifest(capsys):
    from flows.cli import build_parser

    assert set(_commands(build_parser())) == COMMANDS | {"manifest"}
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    listed = {ln.split()[0] for ln in text.split("positional arguments:")[1].split("options:")[0].splitlines()[2:]
              if ln.startswith("    ") and not ln.startswith("     ")}
    assert listed == COMMANDS, "every command has a help line in `rlt --help`"
    assert "manifest" not in text
    assert "rlt catalog sql" in text and "RLT_CATALOG_READER_URL" in text


def test_catalog_help_says_what_each_action_does_and_where_the_catalog_lives(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["catalog", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for action in ("ls", "sql QUERY", "snapshots", "info", "verify", "maintain", "import"):
        assert f"\n  {action} " in text, action
    for must in ("$RLT_CATALOG_URL", "$RLT_CATALOG_READER_URL", "docs/catalog-roles.md", 'rlt catalog sql "SELECT',
                 "artifacts_committed", "--snapshot", "--retention-s", "--key"):
        assert must in text, must
    assert "manifest sql" not in text


def test_lineage_of_a_problem_and_an_unknown_id(store, capsys):
    ctx, problems = store
    pid = ctx.catalog.sql("SELECT problem_id FROM data_problems LIMIT 1").to_pylist()[0]["problem_id"]
    assert main(["--data-root", ctx.root, "lineage", pid, "--json"]) == 0
    steps = json.loads(capsys.readouterr().out)
    assert [s["step"] for s in steps] == ["raw problem", "ingest artifact"]
    assert steps[0]["source"] == "builtin:countdown" and steps[1]["key"] == problems.key
    assert main(["--data-root", ctx.root, "lineage", "d_nope"]) == 1


def test_plan_reports_cached_and_new_stages(store, tmp_path, tiny_model_dir, capsys):
    ctx, _ = store
    # the same ingest config as the fixture's (a recipe checks against the benchmarks it evaluates on by default)
    recipe = tiny_recipe(tiny_model_dir, ingest={"source": {"uri": "builtin:countdown", "n": 5},
                                                 "heldout_fraction": 0.2,
                                                 "decontaminate": {"benchmarks": ["countdown-heldout",
                                                                                  "arithmetic-heldout"]}})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["--data-root", ctx.root, "plan", "--recipe", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ingest" in out and "cached" in out and "new: no earlier" in out
    assert "evaluate[base]" in out and "evaluate[distilled]" in out   # node ids are data, not rich markup
    # the reward's student from the night's baseline student: that branch is planned before the teacher
    assert main(["--data-root", ctx.root, "plan", "--recipe", str(path),
                 "--set", "train_teacher.reward_student=baseline"]) == 0
    out = capsys.readouterr().out
    assert out.index("filter[reference]") < out.index("distill[reference]") < out.index("train_teacher")


def test_bad_recipe_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\ngenerate: {num_sampels: 3}\n")
    assert main(["--data-root", str(tmp_path), "plan", "--recipe", str(path)]) == 2
    assert "num_sampels" in capsys.readouterr().err


def test_run_one_stage_is_its_own_flow(tmp_path, tiny_model_dir, capsys):
    recipe = tiny_recipe(tiny_model_dir)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    root = str(tmp_path / "data")
    t0 = datetime.datetime.now(datetime.timezone.utc)
    assert main(["--data-root", root, "run", "ingest", "--recipe", str(path)]) == 0
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:   # this run is the newest rlt-ingest flow run
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["rlt-ingest"])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
    assert runs and runs[0].expected_start_time >= t0 and runs[0].state.type.value == "COMPLETED"
    from infra.catalog.lake import Catalog
    from infra.catalog.store import Store

    names = [r["name"] for r in Catalog(Store(root)).rows("SELECT name FROM artifacts_committed ORDER BY name")]
    assert names == ["problems", "quarantine"], "only the stage asked for (and what it needs) ran"


def test_unusable_source_is_one_clear_line_without_traceback(tmp_path, tiny_model_dir):
    """A source that is not a dataset: exit 2 and one `rlt:` line; Prefect's task/flow loggers keep the message
    but not the traceback (that only with --debug). Real CLI process, real Prefect run."""
    import os
    import subprocess
    import sys

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    recipe = tiny_recipe(tiny_model_dir, ingest={"source": {"uri": str(empty)}})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root}
    env.pop("PREFECT_HOME", None)

    def rlt(*extra):
        return subprocess.run([sys.executable, "-m", "flows.cli", "--data-root", str(tmp_path / "data"), *extra,
                               "run", "ingest", "--recipe", str(path)], capture_output=True, text=True, env=env,
                              timeout=600)

    out = rlt()
    text = out.stdout + out.stderr
    assert out.returncode == 2, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("rlt: ")] == \
        [f"rlt: {empty}: file is empty; expected JSON Lines (one JSON object per line)"], text[-2000:]
    debug = rlt("--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stdout + debug.stderr


def test_an_unreachable_hub_model_is_one_line_and_its_traceback_only_with_debug(tmp_path, tiny_model_dir):
    """`rlt plan` of a recipe naming a hub model on a machine without the hub: one `rlt:` line (it printed 116 lines
    and four chained tracebacks before)."""
    import os
    import subprocess
    import sys

    recipe = tiny_recipe(tiny_model_dir, train_teacher={"base_model": "rlt-no-such-org/no-such-model"})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": root, "HF_HUB_OFFLINE": "1"}

    def rlt(*extra):
        return subprocess.run([sys.executable, "-m", "flows.cli", "--data-root", str(tmp_path / "data"), *extra,
                               "plan", "--recipe", str(path)], capture_output=True, text=True, env=env, timeout=300)

    out = rlt()
    lines = (out.stdout + out.stderr).strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, lines[:20]
    assert lines[0].startswith("rlt: model 'rlt-no-such-org/no-such-model': not a local folder and the hub download "
                               "failed (") and lines[0].endswith("use builtin:smollm2-135m-instruct or a local "
                                                                 "folder here"), lines[0]
    debug = rlt("--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_catalog_sql_before_anything_was_committed_says_so(tmp_path, capsys):
    assert main(["--data-root", str(tmp_path / "fresh"), "catalog", "sql", "SELECT 1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rlt: no catalog yet at sqlite:") and \
        err[0].endswith(f"nothing has been committed to {tmp_path / 'fresh'}"), err
