"""Write ``tutorial_lib/reference_results.json``, the reference run the accuracy floors start from.

How the shipped file was made: notebooks 02-05 run in order (``make demo``) on 2 CPU cores, then this script on
the ``outputs/results.json`` they recorded:

    .venv/bin/python tools/make_reference_results.py outputs/results.json --about "notebooks 02-05 executed ..."

It keeps every task's default-profile methods (their metrics, and the profile and seed each was run with) and
writes the file atomically as sorted, indented JSON. A maintenance step: the package only reads the file
(``tutorial_lib.report.reference_results``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tutorial_lib._io import atomic_write_text  # noqa: E402
from tutorial_lib.report import TASKS  # noqa: E402


def reference_from(results: Mapping[str, Any], about: str) -> dict[str, Any]:
    """A reference run made from ``results``: every task's default-profile methods, described by ``about``."""
    reference: dict[str, Any] = {"_about": about}
    for task in TASKS:
        entry = results.get(task)
        if not entry:
            continue
        details = entry.get("details", {})
        methods = [m for m in entry["methods"] if details.get(m, {}).get("profile") == "default"]
        if methods:
            reference[task] = {**{k: v for k, v in entry.items() if k not in ("methods", "details")},
                               "methods": {m: entry["methods"][m] for m in methods},
                               "details": {m: {k: details[m].get(k) for k in ("profile", "seed")} for m in methods}}
    return reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="the results.json of a default-profile run of notebooks 02-05")
    parser.add_argument("--about", required=True, help="how the run was made: machine, profile, seed, versions, date")
    parser.add_argument("--out", type=Path, default=ROOT / "tutorial_lib" / "reference_results.json")
    args = parser.parse_args(argv)
    reference = reference_from(json.loads(args.results.read_text()), args.about)
    if len(reference) == 1:
        parser.error(f"{args.results} has no default-profile results")
    atomic_write_text(args.out, json.dumps(reference, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({', '.join(t for t in reference if t != '_about')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
