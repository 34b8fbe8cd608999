"""Benchmarks behind ``make bench``: time to accuracy, throughput against the hardware, the demo's cost.

Three questions, each answered with raw figures and a ratio (see ``benchmarks/README.md``):

- **Time to accuracy** (:mod:`.bench_accuracy`): seconds until the validation accuracy on the
  clothing set first reaches 0.85, for the library's default fine-tuning path and for the
  PyTorch "Transfer Learning for Computer Vision" tutorial's recipe, on the same backbone,
  data and machine.
- **Throughput against the hardware** (:mod:`.bench_throughput`): images/s of frozen feature
  extraction and of one ``finetune_top`` training step, each as a fraction of the rate the
  machine's measured matrix-multiply speed allows; and images/s of ``tl.predict``.
- **The demo** (here): wall seconds and peak resident memory of each notebook run by
  ``python -m tutorial_lib run`` and of the whole run.

:func:`run_bench` does all three and :func:`~.bench_report.write_report` writes ``bench.json``
and ``bench.md``; ``python -m tutorial_lib bench`` is the command line.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..data import load_dataset
from ..env import get_device
from ..report import load_results, results_path
from ..env import resolve_precision
from ..profiles import get_profile
from ..train import limit_split
from . import runner
from .bench_accuracy import THRESHOLD, summarise_time_to_accuracy, time_to_accuracy_ours, time_to_accuracy_recipe
from .bench_throughput import machine_description, matmul_peak_flops, predict_rate, throughput


# --------------------------------------------------------------------------- the demo


def demo_runtime(*, run: bool, results: Path | None = None, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Wall seconds and peak RSS of each notebook and of the whole demo.

    ``run=True`` executes every notebook (``python -m tutorial_lib run``'s path) into a
    temporary folder and results file; ``run=False`` reads the ``runtime`` section of an
    existing results file (default ``outputs/results.json``), as the last demo left it.
    """
    if run:
        with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
            start = time.perf_counter()
            runner.run_notebooks(runner.discover_notebooks(), output_dir=Path(tmp) / "notebooks",
                                 results=Path(tmp) / "results.json", echo=echo)
            wall = time.perf_counter() - start
            runtime = load_results(Path(tmp) / "results.json").get("runtime", {})
        source = "measured by this bench run (python -m tutorial_lib run)"
    else:
        path = results_path(results)
        runtime = load_results(path).get("runtime", {}) if path.exists() else {}
        wall = None
        source = (f"read from {path} (last modified {time.strftime('%Y-%m-%d %H:%M', time.localtime(path.stat().st_mtime))})"
                  if path.exists() else f"not measured: {path} does not exist")
    notebooks = {name: {"seconds": float(r["seconds"]), "peak_rss_mb": float(r["peak_rss_mb"])}
                 for name, r in sorted(runtime.items())}
    total = sum(r["seconds"] for r in notebooks.values()) if notebooks else None
    peak = max((r["peak_rss_mb"] for r in notebooks.values()), default=None)
    return {"source": source, "notebooks": notebooks, "total_seconds": total, "runner_wall_seconds": wall,
            "max_peak_rss_mb": peak}


# --------------------------------------------------------------------------- the whole bench


@dataclass(frozen=True)
class BenchSettings:
    """How much work :func:`run_bench` does."""

    budget_s: float = 1200.0  # the recipe's wall-clock budget
    threshold: float = THRESHOLD
    profile: str = "default"  # the library's run profile (image size, batch size, epochs)
    max_images: int | None = None  # cap on every split (quick runs)
    recipe_image_size: int = 224
    matmul_size: int = 2048
    repeats: int = 5  # best-of repeats for the throughput figures
    run_demo: bool = True
    results: str | None = None  # results.json to read the demo's runtime from when not running it
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> "BenchSettings":
        """Tiny sizes for a smoke test of the harness: every figure is produced, none is meaningful."""
        return replace(cls(budget_s=20.0, profile="quick", max_images=20, recipe_image_size=96, matmul_size=512,
                           repeats=1, run_demo=False), **overrides)


def run_bench(settings: BenchSettings = BenchSettings(), device: torch.device | None = None, *,
              backbone_name: str = "auto", progress: bool = True, echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Measure everything and return the ``bench.json`` content (see the module docstring)."""
    device = device or get_device("auto")
    started = time.perf_counter()
    machine = machine_description(device)
    profile = get_profile(settings.profile, device)
    if settings.max_images is not None:
        profile = replace(profile, max_images=settings.max_images)
    data = load_dataset("clothing", seed=settings.seed)
    splits = {name: limit_split(split, profile.max_images, settings.seed) for name, split in data.splits.items()}
    n_classes = len(data.classes)

    echo(f"[bench] matrix-multiply peak ({settings.matmul_size}^2, float32) ...")
    peak = matmul_peak_flops(torch.float32, settings.matmul_size, device)
    peak_bf16 = None
    if resolve_precision("auto", device) == "bfloat16":  # the trunk will run in bfloat16: measure that rate too
        peak_bf16 = matmul_peak_flops(torch.bfloat16, settings.matmul_size, device)
        echo(f"[bench] bfloat16 matrix-multiply peak: {peak_bf16 / 1e9:.1f} GFLOP/s")
    echo(f"[bench] {peak / 1e9:.1f} GFLOP/s; throughput of feature extraction and a fine-tuning step ...")
    rates = throughput(backbone_name, profile, device, n_classes=n_classes, peak_flops=peak,
                       peak_flops_bf16=peak_bf16, repeats=settings.repeats, seed=settings.seed)
    rates["predict"] = predict_rate(backbone_name, profile, device, splits["test"].images, data.classes,
                                    seed=settings.seed)
    echo(f"[bench] predict: {rates['predict']['images_per_s']:.1f} img/s; time to accuracy {settings.threshold}: "
         "library default path ...")
    ours = time_to_accuracy_ours(splits, n_classes, device, backbone_name=backbone_name, profile=profile,
                                 threshold=settings.threshold, seed=settings.seed, progress=progress)
    echo(f"[bench] ours: {ours.seconds} s; tutorial recipe (budget {settings.budget_s:.0f} s) ...")
    recipe = time_to_accuracy_recipe(splits, n_classes, device, backbone_name=backbone_name,
                                     threshold=settings.threshold, budget_s=settings.budget_s,
                                     image_size=settings.recipe_image_size, seed=settings.seed, progress=progress)
    tta = summarise_time_to_accuracy(ours, recipe)
    echo(f"[bench] recipe: {tta['recipe_seconds']:.0f} s (reached: {recipe.reached}); demo ...")
    demo = demo_runtime(run=settings.run_demo, results=Path(settings.results) if settings.results else None,
                        echo=echo)
    machine["load_average_1min_at_end"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": asdict(settings),
        "machine": machine,
        "dataset": {"name": data.name, "n_train": len(splits["train"]), "n_val": len(splits["val"]),
                    "n_classes": n_classes},
        "time_to_accuracy_ratio": tta["time_to_accuracy_ratio"],
        "feature_extraction_fraction_of_limit": rates["feature_extraction"]["fraction_of_limit"],
        "finetune_step_fraction_of_limit": rates["finetune_step"]["fraction_of_limit"],
        "matmul_peak_flops": peak,
        "matmul_peak_flops_bfloat16": peak_bf16,
        "time_to_accuracy": tta,
        "throughput": rates,
        "demo": demo,
        "bench_seconds": round(time.perf_counter() - started, 1),
    }
