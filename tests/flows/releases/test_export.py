"""`rlt export`: a tiny factory's distill set as hf / parquet / jsonl releases, loaded back with `datasets`, the
card and manifest checked against the catalog, the error cases, an S3 target, and one distillation step trained
from the exported folder."""
from __future__ import annotations

import hashlib
import json
import math
import os
import time

import pytest

from flows.cli import main
from flows.releases.export import ExportError, resolve_release
from infra.catalog.lake import Catalog
from infra.catalog.store import Store
from tests.flows.test_factory import tiny_recipe

DISTILL_COLS = ["example_id", "problem_id", "explanation_id", "origin", "system", "question", "assistant", "reward"]


@pytest.fixture(scope="module")
def factory(tmp_path_factory, tiny_model_dir):
    """One tiny factory run through the filter stage (the distill set is the release)."""
    from flows.factory import factory_flow

    root = str(tmp_path_factory.mktemp("export") / "data")
    out = factory_flow(recipe=tiny_recipe(tiny_model_dir), root=root, until="filter", tracking=False)
    cat = Catalog(Store(root), read_only=True)
    key = out["distill_set"]["key"]
    rows = cat.sql(f"SELECT {', '.join(DISTILL_COLS)} FROM data_distill_set WHERE artifact_key = ? "
                   "ORDER BY example_id", [key]).to_pylist()
    ledger = cat.sql("SELECT count(*) AS n FROM data_scored_explanations WHERE artifact_key = ?",
                     [out["scored_explanations"]["key"]]).to_pylist()[0]["n"]
    yield {"root": root, "out": out, "key": key, "rows": rows, "ledger_rows": ledger, "catalog": cat}
    cat.close()


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """`load_dataset` caches under the test's folder, not ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    return tmp_path


def _export(factory, capsys, *args) -> tuple[int, str, str]:
    rc = main(["--data-root", factory["root"], "export", *args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def _load_line(stdout: str) -> dict:
    """Run the exact python line the CLI printed last; its variables."""
    line = stdout.strip().splitlines()[-1]
    assert line.startswith("from datasets import")
    ns: dict = {}
    exec(line, ns)
    return ns


def _sorted(rows):
    return sorted(({c: r[c] for c in DISTILL_COLS} for r in rows), key=lambda r: r["example_id"])


def _check_manifest(out: str, *, remote_files: dict | None = None) -> dict:
    man = json.load(open(os.path.join(out, "rlt_export.json")))
    on_disk = set()
    for base, _, names in os.walk(out):
        on_disk |= {os.path.relpath(os.path.join(base, n), out) for n in names}
    assert set(man["files"]) == on_disk - {"rlt_export.json"}
    for rel, f in man["files"].items():
        data = open(os.path.join(out, rel), "rb").read()
        assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["bytes"], rel
    return man


def test_hf_export_loads_and_trains_one_distillation_step(factory, tmp_path, capsys, tiny_model_dir):
    out = str(tmp_path / "release-hf")
    rc, stdout, _ = _export(factory, capsys, "latest", "--format", "hf", "--out", out, "--with-ledger")
    assert rc == 0, stdout
    assert f"exported distill_set {factory['key']}" in stdout and "matched as latest" in stdout
    ds = _load_line(stdout)["ds"]
    assert set(ds) == {"train", "scored"}
    assert _sorted(ds["train"]) == _sorted(factory["rows"])
    assert ds["scored"].num_rows == factory["ledger_rows"] > 0
    man = _check_manifest(out)
    assert man["format"] == "hf" and man["splits"]["train"]["rows"] == len(factory["rows"])
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")], "no staging folder left behind"

    # the round trip: one SFT step of the project's own distillation code on the exported rows
    from infra.engine.models import fresh_model, model_and_tokenizer
    from rlt_core.training.distill import DistillConfig, distill_student

    model = fresh_model(tiny_model_dir, "float32")
    _, tok = model_and_tokenizer(tiny_model_dir, "float32", padding_side="right")
    rt = {"use_cpu": True, "bf16": False, "gradient_checkpointing": False}
    cfg = DistillConfig(max_steps=1, batch_size=1, max_length=512, runtime=rt)
    res = distill_student(model, tok, ds["train"], cfg, str(tmp_path / "sft"))
    assert res.steps == 1 and math.isfinite(res.final_loss)
    assert os.path.exists(os.path.join(res.model_dir, "model.safetensors"))


def test_parquet_export_card_and_manifest(factory, hf_cache, capsys):
    import datasets

    out = str(hf_cache / "release-pq")
    key, produced = factory["key"], factory["out"]
    rc, stdout, _ = _export(factory, capsys, key[:10], "--format", "parquet", "--out", out, "--with-ledger")
    assert rc == 0 and "matched as prefix" in stdout
    ns = _load_line(stdout)
    assert _sorted(ns["ds"]) == _sorted(factory["rows"])
    assert ns["scored"].num_rows == factory["ledger_rows"]
    assert sorted(os.listdir(os.path.join(out, "data"))) == ["train-00000-of-00001.parquet"]
    # the card's YAML configs: the folder itself loads, per config
    assert datasets.load_dataset(out, split="train").num_rows == len(factory["rows"])
    assert datasets.load_dataset(out, "scored", split="train").num_rows == factory["ledger_rows"]

    card = open(os.path.join(out, "README.md")).read()
    assert card.startswith("---\nlicense: other\n") and "config_name: scored" in card
    for stage in ("problems", "teacher_checkpoint", "explanations", "scored_explanations", "distill_set"):
        assert produced[stage]["key"] in card, stage   # the lineage chain ingest -> filter
    teacher = factory["catalog"].artifact(produced["teacher_checkpoint"]["key"])
    student = json.loads(factory["catalog"].artifact(produced["scored_explanations"]["key"])["models_json"])["student"]
    assert teacher["digest"] in card and student in card
    assert "tiny-test" in card and factory["out"]["run_id"] in card and "builtin:countdown" in card
    assert "never published through an audited alias" in card and "best_of_k" in card and "quarantined at ingest" in card
    n_teacher = sum(r["origin"] == "teacher" for r in factory["rows"])
    assert f"{n_teacher} teacher" in card

    man = _check_manifest(out)
    facts = man["facts"]
    assert [a["stage"] for a in facts["lineage"]] == ["ingest", "train_teacher", "generate", "score", "filter"]
    assert facts["teacher"]["digest"] == teacher["digest"]
    assert facts["students"]["score.student"]["digest"] == student
    assert facts["filter"]["stats"]["kept"] == len(factory["rows"])
    assert sum(d["rows"] for d in facts["filter"]["decisions"]) == produced["filter_decisions"]["num_rows"]
    assert facts["quarantine"]["rows"] == produced["quarantine"]["num_rows"]
    assert facts["recipe"]["name"] == "tiny-test" and facts["recipe"]["hash"]


def test_jsonl_export_and_overwrite(factory, hf_cache, capsys):
    out = str(hf_cache / "release-jsonl")
    rc, stdout, _ = _export(factory, capsys, factory["key"], "--format", "jsonl", "--out", out)
    assert rc == 0 and "matched as key" in stdout
    assert _sorted(_load_line(stdout)["ds"]) == _sorted(factory["rows"])
    assert not os.path.exists(os.path.join(out, "scored"))
    _check_manifest(out)

    rc, _, err = _export(factory, capsys, "latest", "--format", "jsonl", "--out", out)
    assert rc == 2 and [ln for ln in err.splitlines() if "rlt" in ln or "Traceback" in ln] == \
        [f"rlt: {out} is not empty; pass --overwrite to replace it"], err
    rc, stdout, _ = _export(factory, capsys, "latest", "--format", "parquet", "--out", out, "--overwrite")
    assert rc == 0
    assert sorted(os.listdir(out)) == ["README.md", "data", "rlt_export.json"]
    assert os.listdir(os.path.join(out, "data")) == ["train-00000-of-00001.parquet"], "the old release is gone"
    _check_manifest(out)
    assert not [n for n in os.listdir(hf_cache) if n.startswith(".")], "no staging or old folder left behind"


def test_errors_are_one_line(factory, tmp_path, capsys):
    out = str(tmp_path / "x")
    problems_key = factory["out"]["problems"]["key"]
    cases = {
        "deadbeef00": "no release 'deadbeef00'",
        "current": "tried an alias, 'latest'",   # the CLI passes the releases alias lookup (flows/releases/aliases.py)
        factory["key"][:5]: "needs >= 8 hex characters, got 5",
        problems_key: "is a problems artifact",
        problems_key[:9]: "not a distill_set",
    }
    for ref, want in cases.items():
        rc, stdout, err = _export(factory, capsys, ref, "--out", out)
        assert rc == 2 and stdout == "", ref
        assert err.startswith("rlt: ") and len(err.strip().splitlines()) == 1 and want in err, err
    assert not os.path.exists(out)
    with pytest.raises(SystemExit):   # argparse: a format that does not exist
        main(["--data-root", factory["root"], "export", "latest", "--format", "csv", "--out", out])
    capsys.readouterr()


def test_resolve_release_and_the_alias_hook(factory):
    cat, key = factory["catalog"], factory["key"]
    assert resolve_release(cat, "latest").key == key
    assert resolve_release(cat, key.upper()).via == "key"
    assert resolve_release(cat, key[:8]).via == "prefix"
    hooked = resolve_release(cat, "current", alias_lookup=lambda c, ref: key if ref == "current" else None)
    assert (hooked.key, hooked.via) == (key, "alias")
    with pytest.raises(ExportError, match="tried an alias, 'latest'"):
        resolve_release(cat, "nightly", alias_lookup=lambda c, ref: None)
    with pytest.raises(ExportError, match="not a committed artifact"):
        resolve_release(cat, "current", alias_lookup=lambda c, ref: "f" * 20)


@pytest.mark.services
def test_export_to_s3_writes_success_last(factory, seaweed_s3, monkeypatch):
    """An S3 target (a real SeaweedFS): files, then _SUCCESS; a non-empty prefix is refused; --overwrite replaces
    it."""
    from flows.releases.export import ExportRequest, export_release

    for k, v in seaweed_s3["env"].items():
        monkeypatch.setenv(k, v)
    target = f"s3://{seaweed_s3['bucket']}/releases-{time.time_ns()}/night-1"
    res = export_release(factory["catalog"], ExportRequest(ref="latest", format="parquet", out=target,
                                                           with_ledger=True))
    store = Store(target)
    names = {p.split("night-1/", 1)[1] for p in store.fs.find(target)}
    assert names == set(res.files) | {"_SUCCESS"}
    marker = store.read_json(f"{target}/_SUCCESS")
    man = store.read_bytes(f"{target}/rlt_export.json")
    assert marker["key"] == factory["key"] and marker["manifest_sha256"] == hashlib.sha256(man).hexdigest()
    for rel, f in json.loads(man)["files"].items():
        assert hashlib.sha256(store.read_bytes(f"{target}/{rel}")).hexdigest() == f["sha256"], rel
    with pytest.raises(ExportError, match="not empty"):
        export_release(factory["catalog"], ExportRequest(ref="latest", format="jsonl", out=target))
    export_release(factory["catalog"], ExportRequest(ref="latest", format="jsonl", out=target, overwrite=True))
    store.fs.invalidate_cache()
    names = {p.split("night-1/", 1)[1] for p in store.fs.find(target)}
    assert names == {"README.md", "data/train.jsonl", "rlt_export.json", "_SUCCESS"}


def test_parquet_shards_roll_over_and_hf_builds_from_them(factory, hf_cache):
    """Small batches and a tiny shard size: several train-0000i-of-0000N files, all rows loaded back, in order."""
    import datasets

    from flows.releases.export import ExportRequest, export_release

    n = len(factory["rows"])
    for fmt in ("parquet", "hf"):
        out = str(hf_cache / f"sharded-{fmt}")
        res = export_release(factory["catalog"], ExportRequest(ref="latest", format=fmt, out=out, batch_rows=2,
                                                               shard_bytes=1))
        assert res.splits == {"train": n}
        if fmt == "parquet":
            shards = sorted(os.listdir(os.path.join(out, "data")))
            m = (n + 1) // 2
            assert shards == [f"train-{i:05d}-of-{m:05d}.parquet" for i in range(m)]
            ds = datasets.load_dataset("parquet", data_files=os.path.join(out, "data", "*.parquet"), split="train")
        else:
            ds = datasets.load_from_disk(out)["train"]
        assert [r["example_id"] for r in ds] == sorted(r["example_id"] for r in factory["rows"])
