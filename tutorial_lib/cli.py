"""Command line: ``python -m tutorial_lib run | bench | datasets | fetch NAME | weights``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from . import runner


def _cmd_run(args: argparse.Namespace) -> int:
    notebooks = runner.discover_notebooks(args.notebooks)
    parameters = {name: runner.parse_value(value) for name, value in args.parameter}
    if args.profile:
        parameters["PROFILE"] = args.profile
    results = Path(args.results).resolve() if args.results else None
    try:
        runs = runner.run_notebooks(notebooks, output_dir=Path(args.output_dir), parameters=parameters,
                                    results=results)
    except (runner.NotebookFailed, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from .report import results_path

    total = sum(r.seconds for r in runs)
    print(f"\nDone: {len(runs)} notebook(s) in {total:.0f} s.")
    print(f"  executed notebooks: {Path(args.output_dir)}/")
    print(f"  results:            {results_path(results)}")
    figures = results_path(results).parent / "figures"
    if figures.is_dir():
        print(f"  figures:            {figures}/")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchSettings, run_bench, write_report
    from .env import get_device

    options = {"run_demo": not args.skip_demo, "results": args.results, "threshold": args.threshold}
    if args.budget_s is not None:
        options["budget_s"] = args.budget_s
    settings = BenchSettings.quick(**options) if args.quick else BenchSettings(**options)
    bench = run_bench(settings, get_device(args.device), progress=not args.quick)
    json_path, md_path = write_report(bench, Path(args.output))
    print(md_path.read_text())
    print(f"Written: {json_path} and {md_path}")
    return 0


def _cmd_datasets(args: argparse.Namespace) -> int:
    from .data import list_datasets

    print(list_datasets()[["kind", "task", "licence", "description"]].to_string(max_colwidth=70))
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from .data import DataError, fetch

    try:
        for path in fetch(args.name):
            print(path)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from .models import WeightsUnavailableError, download_googlenet_weights

    try:
        print(download_googlenet_weights())
    except WeightsUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tutorial_lib", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute the ordered notebooks with papermill")
    run.add_argument("notebooks", nargs="*", help="notebook names or prefixes (default: all), e.g. 00 03")
    run.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                     help="override a parameter of the notebooks' parameters cell")
    run.add_argument("--profile", help="run profile passed to the notebooks as PROFILE (e.g. quick, full)")
    run.add_argument("--output-dir", default=str(runner.DEFAULT_OUTPUT_DIR), help="where executed notebooks go")
    run.add_argument("--results", help="results JSON file (default outputs/results.json)")
    run.set_defaults(func=_cmd_run)

    bench = sub.add_parser("bench", help="time to accuracy, throughput against the hardware, the demo's cost")
    bench.add_argument("--budget-s", type=float, help="wall-clock budget of the tutorial recipe (default 1200 s)")
    bench.add_argument("--threshold", type=float, default=0.85, help="validation accuracy to reach (default 0.85)")
    bench.add_argument("--skip-demo", action="store_true",
                       help="do not run the notebooks; read their runtime from the results file")
    bench.add_argument("--results", help="results JSON to read the demo runtime from (default outputs/results.json)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, measures nothing")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    bench.add_argument("--output", default=str(runner.PROJECT_ROOT / "outputs" / "bench.json"),
                       help="bench.json path; the markdown table goes beside it (default outputs/bench.json)")
    bench.set_defaults(func=_cmd_bench)

    sub.add_parser("datasets", help="list the dataset registry").set_defaults(func=_cmd_datasets)
    fetch = sub.add_parser("fetch", help="download a registered dataset into the cache, with checksums")
    fetch.add_argument("name")
    fetch.set_defaults(func=_cmd_fetch)
    sub.add_parser("weights", help="download GoogLeNet's ImageNet weights into the torch cache").set_defaults(
        func=_cmd_weights)

    args = parser.parse_args(argv)
    return args.func(args)
