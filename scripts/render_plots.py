"""Draw docs/results.md's round-2 plots from the committed records (``docs/results/evidence*/``).

    .venv/bin/python scripts/render_plots.py            # writes the PNGs beside their records
    .venv/bin/python scripts/render_plots.py --check    # exit 1 when a plot is missing or older than its records

Plots (each drawn only when its records exist; the functions are ``experiments/plots.py``'s, which the experiment
itself uses for the PNGs in its run folder):

- ``docs/results/evidence/students.png``: every student's held-out accuracy, greedy and avg@8 (from ``summary.json``),
  and the reward bins' students against the bins' mean reward once the run has them;
- ``docs/results/evidence/reward_terms.png``: the main run's GRPO reward terms per step (``grpo.json``);
- ``docs/results/evidence-settings/grpo_runs.png``: the GRPO reward terms of the main run and of every settings run
  with a ``grpo.json`` record, on shared axes;
- ``docs/results/evidence-settings/<name>/students.png``: a finished settings run's students (``summary.json``).

``--check`` compares a hash of each record with the one the script keeps in the PNG's metadata (a tEXt chunk), so a
record rewritten without re-drawing fails; it needs no matplotlib (pixels differ across versions; hashes do not).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STAMP_KEY = "rlt-records"
log = logging.getLogger("render_plots")


def _load(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def _stamp(root: str, records: list[str]) -> str:
    """Which records a plot is drawn from: relative path and a hash of the file's bytes, each."""
    import hashlib

    def digest(path: str) -> str:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:16]

    return ";".join(f"{os.path.relpath(p, root)}@{digest(p)}" for p in sorted(records))


def _plots():
    from experiments import plots

    return plots


def plan(root: str = ROOT) -> list[tuple[str, list[str], Callable[[str], None]]]:
    """(png path, the records it is drawn from, draw(png path)) for every plot whose records exist under ``root``."""
    evidence = os.path.join(root, "docs", "results", "evidence")
    settings = os.path.join(root, "docs", "results", "evidence-settings")
    out: list[tuple[str, list[str], Callable[[str], None]]] = []

    def summary_plot(folder: str, title: str) -> None:
        rec = os.path.join(folder, "summary.json")
        if os.path.exists(rec) and "students" in _load(rec)["numbers"]:
            out.append((os.path.join(folder, "students.png"), [rec],
                        lambda png, rec=rec: _plots().students(_load(rec)["numbers"], png, title)))

    summary_plot(evidence, "round 2, main run (arithmetic-easy-terse)")
    main_grpo = os.path.join(evidence, "grpo.json")
    if os.path.exists(main_grpo):
        def reward_terms(png: str) -> None:
            from bench.teacher_rl import plot_reward_terms

            n = _load(main_grpo)["numbers"]
            plot_reward_terms({int(s): h for s, h in n["history"].items()}, png, n["summary"])

        out.append((os.path.join(evidence, "reward_terms.png"), [main_grpo], reward_terms))
    names = sorted(d for d in os.listdir(settings)
                   if os.path.isdir(os.path.join(settings, d))) if os.path.isdir(settings) else []
    runs = {name: os.path.join(settings, name, "grpo.json") for name in names}
    runs = {name: p for name, p in runs.items() if os.path.exists(p)}
    if runs and os.path.exists(main_grpo):
        sources = {"paper (main run)": main_grpo, **runs}
        out.append((os.path.join(settings, "grpo_runs.png"), list(sources.values()), lambda png: _plots().grpo_runs(
            {k: _load(p)["numbers"]["history"] for k, p in sources.items()}, png)))
    for name in names:
        summary_plot(os.path.join(settings, name), f"round 2, settings run {name}")
    return out


def read_stamp(png: str) -> str:
    """The stamp kept in a PNG's tEXt chunk (stdlib only), '' when there is none."""
    import struct
    import zlib

    try:
        with open(png, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"tEXt" and body.startswith(STAMP_KEY.encode() + b"\0"):
            return body.split(b"\0", 1)[1].decode("latin-1")
        if kind == b"zTXt" and body.startswith(STAMP_KEY.encode() + b"\0"):
            return zlib.decompress(body.split(b"\0", 1)[1][1:]).decode("latin-1")
        pos += 12 + length
    return ""


def write_stamp(png: str, stamp: str) -> None:
    from PIL import Image, PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text(STAMP_KEY, stamp)
    with Image.open(png) as im:
        im.load()
        tmp = png + ".tmp"
        im.save(tmp, format="PNG", pnginfo=meta)
    os.replace(tmp, png)


def check(root: str = ROOT) -> list[str]:
    """The plots under ``root`` that are missing or were drawn from other records than the committed ones."""
    return [os.path.relpath(png, root) for png, records, _ in plan(root) if read_stamp(png) != _stamp(root, records)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="fail when a plot is missing or drawn from other records")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, ROOT)
    stale = check() if args.check else []
    for png, records, draw in [] if args.check else plan():
        stamp = _stamp(ROOT, records)
        draw(png)
        write_stamp(png, stamp)
        log.info("wrote %s (from %s)", os.path.relpath(png, ROOT), ", ".join(os.path.relpath(r, ROOT) for r in records))
    if stale:
        log.error("plots missing or drawn from other records (run .venv/bin/python scripts/render_plots.py): %s",
                  ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
