"""The report of ``make bench``: ``bench.json`` (every raw figure) and ``bench.md`` (target, measured, met)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .._io import atomic_write_text

TARGETS = {"time_to_accuracy_ratio": 15.0, "feature_extraction_fraction_of_limit": 0.5,
           "demo_total_seconds": 600.0, "demo_max_peak_rss_mb": 2048.0}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def markdown_table(bench: dict[str, Any]) -> str:
    """The targets, what was measured and whether each is met, then the raw figures, as markdown."""
    tta, rates, demo, machine = bench["time_to_accuracy"], bench["throughput"], bench["demo"], bench["machine"]

    def met(value: float | None, ok: Callable[[float], bool]) -> str:
        return "—" if value is None else ("yes" if ok(value) else "no")

    ratio = bench["time_to_accuracy_ratio"]
    bound = "≥ " if tta["ratio_is_lower_bound"] else ""
    fe, ft = rates["feature_extraction"], rates["finetune_step"]
    rows = [
        ("Time to val accuracy ≥ {:.2f}: recipe / ours".format(tta["threshold"]), "≥ 15×",
         "—" if ratio is None else f"{bound}{ratio:.1f}× ({bound}{tta['recipe_seconds']:.0f} s / "
                                   f"{tta['ours_seconds']:.0f} s)",
         "not shown (lower bound below target)" if tta["ratio_is_lower_bound"] and ratio is not None
         and ratio < TARGETS["time_to_accuracy_ratio"] else met(ratio, lambda r: r >= TARGETS["time_to_accuracy_ratio"])),
        (f"Frozen feature extraction ({fe.get('precision', 'float32')}), fraction of the float32 matmul-bound rate",
         "≥ 50%", f"{fe['fraction_of_limit']:.0%} ({fe['images_per_s']:.1f} of {fe['limit_images_per_s']:.1f} img/s)",
         met(fe["fraction_of_limit"], lambda f: f >= TARGETS["feature_extraction_fraction_of_limit"])),
        *([("Same, against the bfloat16 matmul-bound rate (stricter)", "(none)",
            f"{fe['fraction_of_bfloat16_limit']:.0%} ({fe['images_per_s']:.1f} of "
            f"{fe['bfloat16_limit_images_per_s']:.1f} img/s)", "—")] if fe.get("fraction_of_bfloat16_limit") else []),
        *([(f"`predict` on {rates['predict']['images']} photo files, model load included", "(none)",
            f"{rates['predict']['images_per_s']:.1f} img/s ({rates['predict']['seconds']:.1f} s)", "—")]
          if rates.get("predict") else []),
        ("Fine-tuning step, fraction of matmul-bound rate", "(none)",
         f"{ft['fraction_of_limit']:.0%} ({ft['images_per_s']:.1f} of {ft['limit_images_per_s']:.1f} img/s)", "—"),
        ("Whole default demo, wall time", "≤ 600 s", _fmt(demo["total_seconds"], 0) + " s"
         if demo["total_seconds"] is not None else "—",
         met(demo["total_seconds"], lambda s: s <= TARGETS["demo_total_seconds"])),
        ("Largest notebook peak RSS", "≤ 2048 MB", _fmt(demo["max_peak_rss_mb"], 0) + " MB"
         if demo["max_peak_rss_mb"] is not None else "—",
         met(demo["max_peak_rss_mb"], lambda m: m <= TARGETS["demo_max_peak_rss_mb"])),
    ]
    lines = [f"# Benchmark ({bench['date']})", "",
             f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['torch_threads']} torch "
             f"threads, torch {machine['torch']}, device {machine['device']}; load average "
             f"{machine.get('load_average_1min')} at start, {machine.get('load_average_1min_at_end')} at end. "
             f"Matrix-multiply peak (float32): {bench['matmul_peak_flops'] / 1e9:.1f} GFLOP/s"
             + (f"; bfloat16: {bench['matmul_peak_flops_bfloat16'] / 1e9:.1f} GFLOP/s"
                if bench.get("matmul_peak_flops_bfloat16") else "") + ".", "",
             "| Figure | Target | Measured | Met |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    ours, recipe = tta["ours"], tta["recipe"]
    lines += ["", "## Time to accuracy", "",
              f"- Ours ({ours['notes'].get('backbone')}, {ours['notes'].get('profile')} profile): caching "
              f"{ours['notes'].get('caching_seconds')} s for {ours['notes'].get('images_cached')} images, then "
              f"validation accuracy " + ", ".join(f"{p['val_accuracy']:.3f} at {p['seconds']:.0f} s"
                                                  for p in ours["timeline"]) + ".",
              f"- Recipe (budget {_fmt(recipe['budget_s'], 0)} s, reached: {tta['recipe_reached']}, stopped at "
              f"{recipe['stopped_at_s']:.0f} s): validation accuracy "
              + (", ".join(f"{p['val_accuracy']:.3f} at {p['seconds']:.0f} s (epoch {p['epoch']:g})"
                           for p in recipe["timeline"]) or "not measured before the budget ran out") + ".",
              "", "## Demo", "", f"Source: {demo['source']}.", ""]
    if demo["notebooks"]:
        lines += ["| Notebook | Wall s | Peak RSS MB |", "|---|---|---|"]
        lines += [f"| {name} | {r['seconds']:.0f} | {r['peak_rss_mb']:.0f} |" for name, r in demo["notebooks"].items()]
        lines += [f"| **total** | {demo['total_seconds']:.0f} | {demo['max_peak_rss_mb']:.0f} (max) |"]
    return "\n".join(lines) + "\n"


def write_report(bench: dict[str, Any], path: Path) -> tuple[Path, Path]:
    """Write ``bench.json`` at ``path`` and the markdown table beside it (``.md``); return both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(bench, indent=2, default=float) + "\n")
    md = path.with_suffix(".md")
    atomic_write_text(md, markdown_table(bench))
    return path, md
