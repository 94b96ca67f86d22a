"""Candidate models against the shipped one on fold 5: clean accuracy and every target shift, as data.

Each candidate is a robustness sweep of its bundle (``benchmarks/robustness.py --bundle B --only
targets --out benchmarks/results/candidates/NAME.json``, with ``label``/``train_command`` keys added);
this script puts them beside the sweep of the model that was shipped when they were proposed (the
candidate's ``reference`` key names that file in ``results/``: a copy of that day's
``results/robustness.json``; default ``candidates_reference.json``, the first round's) and decides,
per the model issue's rule, whether a candidate may replace it: better on clean accuracy AND on
every target shift (a tie or a loss on any shift keeps the shipped model). A candidate whose
weights are those of today's ``results/robustness.json`` is marked as the one shipped now.

    python benchmarks/candidates.py        # writes benchmarks/results/candidates.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def compare(shipped: dict[str, Any], cand: dict[str, Any]) -> dict[str, Any]:
    """Per-shift accuracy of a candidate and the shipped model, and whether the candidate beats it everywhere."""
    ours = {r["corruption"]: r["accuracy"] for r in shipped["rows"]}
    theirs = {r["corruption"]: r["accuracy"] for r in cand["rows"]}
    shifts = ["clean", *shipped["target"]["shifts"]]
    rows = {s: {"shipped": ours.get(s), "candidate": theirs.get(s)} for s in shifts}
    worse = [s for s, r in rows.items() if r["candidate"] is None or r["shipped"] is None
             or r["candidate"] <= r["shipped"]]
    return {"label": cand.get("label", cand["model"]["bundle"]), "weights_sha256": cand["model"]["weights_sha256"],
            "train_command": cand.get("train_command"), "rows": rows,
            "target_met": bool(cand["target"]["met"]), "beats_shipped": not worse, "not_better_on": worse}


DEFAULT_REFERENCE = "candidates_reference.json"


def _shipped(reference: dict[str, Any]) -> dict[str, Any]:
    return {"bundle": reference["model"]["bundle"], "weights_sha256": reference["model"]["weights_sha256"],
            "swept": reference["generated"]}


def build(results: Path = RESULTS) -> dict[str, Any]:
    now = json.loads((results / "robustness.json").read_text())["model"]["weights_sha256"]
    cands = [json.loads(p.read_text()) for p in sorted((results / "candidates").glob("*.json"))]
    refs = {name: json.loads((results / name).read_text())
            for name in sorted({c.get("reference", DEFAULT_REFERENCE) for c in cands} | {DEFAULT_REFERENCE})}
    rows = []
    for c in cands:
        ref = c.get("reference", DEFAULT_REFERENCE)
        row = compare(refs[ref], c)
        row["shipped_now"] = row["weights_sha256"] == now
        row["reference"] = {"file": ref, **_shipped(refs[ref])}
        rows.append(row)
    # one table block per model shipped at the time, in the order the rounds happened
    rows.sort(key=lambda r: r["reference"]["swept"])  # stable: file order within a round
    return {"schema": "tympan.benchmarks.candidates/3",
            "shipped": _shipped(refs[DEFAULT_REFERENCE]),
            "shipped_now": now,
            "rule": "replace the shipped bundle only when a candidate beats it on clean accuracy and on every target shift",
            "candidates": rows}


def main() -> int:
    sys.path.insert(0, str(HERE.parent))
    from tympan.io import write_json_atomic

    doc = build()
    write_json_atomic(RESULTS / "candidates.json", doc)
    for c in doc["candidates"]:
        print(f"{c['label']}: beats shipped: {c['beats_shipped']} (not better on: {', '.join(c['not_better_on']) or '-'})"
              + (" [shipped now]" if c["shipped_now"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
