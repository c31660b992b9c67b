"""Merge a partial arena run into the full one: the rows of the families the partial run measured replace
theirs, the summary, the Pareto fronts and the plot are recomputed, and both commits are recorded.

A full ``arena.py`` run takes about 30 minutes; after a change to our own code only our rows need
running again (``--families taylorseer``, about 10 minutes). Both runs must have the same samples, step
counts and CFG (the same noise and labels follow from them), or the merge is refused.

    python benchmarks/arena.py --families taylorseer --out benchmarks/results/arena_ours.json --png /tmp/ours.png
    python benchmarks/arena_merge.py benchmarks/results/arena_ours.json      # into benchmarks/results/arena.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arena_summary import _finite, fronts_of, plot, summarize  # noqa: E402
from common import ROOT, _json_default  # noqa: E402


def merge(full: dict, part: dict, note: str) -> dict:
    for key in ("samples", "steps", "cfg"):
        if full[key] != part[key]:
            raise SystemExit(f"arena_merge: the runs differ in {key} ({full[key]} vs {part[key]}); run the same arena")
    ran = set(part["families"]) - set(part.get("skipped") or {})     # a skipped family measured nothing
    rows = [r for r in full["rows"] if r["family"] not in ran or r["family"] == "uncached"] + \
        [r for r in part["rows"] if r["family"] != "uncached"]
    steps_list = full["steps"]
    out = dict(full, rows=rows, summary=summarize(rows, steps_list))
    out["fronts"] = fronts_of(rows, steps_list)
    before = full.get("merged") or {"peers_commit": full["machine"]["commit"], "peers_wall_s": full["wall_s"]}
    out["merged"] = {"peers_commit": before["peers_commit"], "peers_wall_s": before["peers_wall_s"],
                     "ours_commit": part["machine"]["commit"], "ours_wall_s": part["wall_s"],
                     "families_rerun": sorted(ran), "note": note}
    out["verification"] = part.get("verification", full.get("verification"))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", help="the partial run's JSON")
    ap.add_argument("--into", default=str(ROOT / "benchmarks" / "results" / "arena.json"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "arena.png"), help="the plot ('none': no plot)")
    ap.add_argument("--note", default="the peers' rows from the full run at peers_commit; ours re-run at ours_commit, "
                                      "the same samples, noise and settings")
    args = ap.parse_args(argv)
    full = json.loads(Path(args.into).read_text())
    out = merge(full, json.loads(Path(args.part).read_text()), args.note)
    Path(args.into).write_text(json.dumps(_finite(out), indent=1, default=_json_default) + "\n")
    if args.png != "none":
        plot(out["rows"], out["steps"], Path(args.png), out["samples"])
    print(f"merged {args.part} into {args.into} ({len(out['rows'])} rows)")


if __name__ == "__main__":
    main()
