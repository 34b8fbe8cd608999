"""Command line: ``python -m tutorial_lib run | bench | train | prepare NAME | download NAME | datasets | fetch NAME | weights``,
``predict MODEL IMAGES...`` and ``export-onnx MODEL OUT.onnx``.

``train`` also runs under ``torchrun`` (one process per GPU), e.g.
``torchrun --nproc_per_node 4 -m tutorial_lib train --data eyepacs --image-size 512``.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import runner



def _precision(text: str) -> str:
    """``--precision``: one of :data:`tutorial_lib.env.PRECISIONS` (imported only when the flag is given)."""
    from ..env import PRECISIONS

    if text not in PRECISIONS:
        raise argparse.ArgumentTypeError(f"{text!r}: use one of {', '.join(PRECISIONS)}")
    return text

def whole(low: int, high: int | None = None) -> "Callable[[str], int]":
    """An argparse ``type``: a whole number in ``[low, high]``; argparse names the flag in its error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a whole number, got {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value
    return parse


def number(low: float, high: float | None = None, *, above: bool = False) -> "Callable[[str], float]":
    """An argparse ``type``: a finite number ``>= low`` (``> low`` with ``above``) and ``<= high``; NaN and inf
    are refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects a number, got {text!r}") from None
        if not math.isfinite(value) or value < low or (above and value == low) or (high is not None and value > high):
            limit = f" and <= {high:g}" if high is not None else ""
            raise argparse.ArgumentTypeError(f"must be a finite number {'>' if above else '>='} {low:g}{limit}, "
                                             f"got {text}")
        return value
    return parse


def _cmd_run(args: argparse.Namespace) -> int:
    parameters = {name: runner.parse_value(value) for name, value in args.parameter}
    if args.profile:
        parameters["PROFILE"] = args.profile
    results = Path(args.results).resolve() if args.results else None
    try:
        notebooks = runner.discover_notebooks(args.notebooks)
        runs = runner.run_notebooks(notebooks, output_dir=Path(args.output_dir), parameters=parameters,
                                    results=results)
    except (runner.NotebookFailed, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    from ..report import results_path

    total = sum(r.seconds for r in runs)
    print(f"\nDone: {len(runs)} notebook(s) in {total:.0f} s.")
    print(f"  executed notebooks: {Path(args.output_dir)}/")
    print(f"  results:            {results_path(results)}")
    figures = results_path(results).parent / "figures"
    if figures.is_dir():
        print(f"  figures:            {figures}/")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import BenchSettings, run_bench
    from .bench_report import write_report
    from ..env import get_device

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
    from ..data import list_datasets

    print(list_datasets()[["kind", "task", "licence", "description"]].to_string(max_colwidth=70))
    return 0


def _cmd_fetch(args: argparse.Namespace) -> int:
    from ..data import DataError, fetch

    try:
        for path in fetch(args.name):
            print(path)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_weights(args: argparse.Namespace) -> int:
    from ..models import WeightsUnavailableError, download_googlenet_weights

    try:
        print(download_googlenet_weights())
    except WeightsUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from ..data import DataError
    from .jobs import train_job

    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    if checkpoint is not None and checkpoint.is_dir():
        print(f"error: --checkpoint {checkpoint} is a folder; give a file name, e.g. {checkpoint / 'run.pt'}",
              file=sys.stderr)
        return 2

    try:
        summary = train_job(args.data, backbone=args.backbone, strategy=args.strategy, epochs=args.epochs,
                            batch_size=args.batch_size, accumulate=args.accumulate, image_size=args.image_size,
                            checkpoint=args.checkpoint, results=args.results, seed=args.seed, device=args.device,
                            precision=args.precision, channels_last=args.channels_last,
                            max_images=args.max_images, num_workers=args.num_workers, lr_head=args.lr_head,
                            lr_backbone=args.lr_backbone, source=args.source, progress=not args.quiet,
                            overwrite=args.overwrite)
    except (DataError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if summary["world_size"] == 1 or int(os.environ.get("RANK", 0)) == 0:
        scores = "  ".join(f"{split} {name} {value:.3f}" for split, m in summary["metrics"].items()
                           for name, value in m.items() if name in ("accuracy", "qwk"))
        print(f"{summary['dataset']}: {summary['strategy']} of {summary['backbone']} on {summary['world_size']} "
              f"process(es), {summary['seconds']:.0f} s; {scores}")
        if args.results:
            print(f"  results: {args.results}")
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from ..data import DataError, load_dataset
    from ..env import default_num_workers
    from .prepare import prepare

    try:
        data = load_dataset(args.name, folder=args.source, seed=args.seed)
        workers = default_num_workers(max_workers=64) if args.workers is None else args.workers
        out = prepare(data, args.output, size=args.size, crop=args.crop, chunk_size=args.chunk_size, workers=workers)
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(out)
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from ..data import DataError
    from .prepare import kaggle_download

    try:
        print(kaggle_download(args.name, args.output))
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def _add_scale_out_commands(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train a backbone on a dataset (plain, or under torchrun for DDP)")
    train.add_argument("--data", required=True, help="prepared folder, registry name, or your folder/CSV")
    train.add_argument("--source", help="download folder of a registry dataset (default: its cache folder)")
    train.add_argument("--backbone", default="auto")
    train.add_argument("--strategy", default="finetune_full", choices=["finetune_full", "finetune_top"])
    train.add_argument("--epochs", type=whole(1), default=1)
    train.add_argument("--batch-size", type=whole(1), default=64, help="global batch per optimizer step")
    train.add_argument("--accumulate", type=whole(1), default=1, help="micro-batches per step on each process")
    train.add_argument("--image-size", type=whole(16), default=224)
    train.add_argument("--checkpoint", help="checkpoint file: written each epoch, resumed from if it is this run's")
    train.add_argument("--overwrite", action="store_true",
                       help="replace a --checkpoint file that is not this run's (default: refuse and keep it)")
    train.add_argument("--results", help="results JSON file (rank 0 writes it)")
    train.add_argument("--seed", type=whole(0), default=0)
    train.add_argument("--device", default="auto", help="auto, cpu, cuda (under torchrun: cuda:LOCAL_RANK)")
    train.add_argument("--precision", type=_precision, default=None,
                       help="tutorial_lib.env.PRECISIONS; default: auto (bfloat16 where the GPU has it) on CUDA, "
                            "float32 elsewhere; float16 adds a gradient scaler")
    train.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="default: on for CUDA")
    train.add_argument("--max-images", type=whole(1), help="cap on every split (smoke runs)")
    train.add_argument("--num-workers", type=whole(0),
                       help="DataLoader workers per process (default: cores - 1, max 4)")
    train.add_argument("--lr-head", type=number(0, above=True), default=1e-3)
    train.add_argument("--lr-backbone", type=number(0), default=1e-4)
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(func=_cmd_train)

    prep = sub.add_parser("prepare", help="decode, crop and resize a dataset once into memory-mapped arrays")
    prep.add_argument("name", help="registry name (eyepacs, aptos2019, clothing_full, ...) or your folder/CSV")
    prep.add_argument("--source", help="where the download was unpacked (default: <cache>/NAME)")
    prep.add_argument("--size", type=whole(16), default=224)
    prep.add_argument("--crop", choices=["disc", "pad"], help="default: disc for fundus sets, pad otherwise")
    prep.add_argument("--output", help="default: <cache>/prepared/NAME_SIZE")
    prep.add_argument("--chunk-size", type=whole(1), default=256)
    prep.add_argument("--workers", type=whole(0), help="decoding processes (default: cores - 1)")
    prep.add_argument("--seed", type=whole(0), default=0, help="seed of the train/val/test split")
    prep.set_defaults(func=_cmd_prepare)

    down = sub.add_parser("download", help="download a Kaggle dataset with your own ~/.kaggle/kaggle.json")
    down.add_argument("name", help="a registry dataset with a Kaggle command (`datasets` lists them); others are "
                                   "refused with the list")
    down.add_argument("--output", help="default: <cache>/NAME")
    down.set_defaults(func=_cmd_download)


def _cmd_predict(args: argparse.Namespace) -> int:
    from ..export import ModelFileError
    from ..inference import PredictError, predict_table

    try:
        table, skipped = predict_table(args.model, args.images, batch_size=args.batch_size, device=args.device,
                                       gradcam_dir=args.gradcam, progress=not args.quiet)
    except (ModelFileError, PredictError, ValueError, OSError) as err:  # OSError: e.g. an unwritable --gradcam
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path, why in skipped:
        print(f"skipped {path}: {why}", file=sys.stderr)
    if table.empty:
        print(f"error: none of the {len(skipped)} input(s) could be predicted (reasons above).", file=sys.stderr)
        return 1
    try:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
    except OSError as err:
        print(f"error: cannot write {args.out} ({err.strerror or err}); choose another --out.", file=sys.stderr)
        return 1
    print(f"{len(table)} image(s) predicted, {len(skipped)} skipped: {args.out}"
          + (f"; heat maps in {args.gradcam}/" if args.gradcam else ""))
    return 0


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from ..export import ModelFileError, export_onnx

    try:
        out = export_onnx(args.model, args.out, opset=args.opset)
    except (ModelFileError, ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{out} (dynamic batch; checked against PyTorch with onnxruntime)\n"
          f"preprocessing: {out.with_name(out.stem + '.preprocessing.json')}")
    return 0


def _add_model_commands(sub: argparse._SubParsersAction) -> None:
    pred = sub.add_parser("predict", help="predict images with a model saved by tl.export.save_model")
    pred.add_argument("model", help="the saved model's folder (e.g. outputs/models/clothing)")
    pred.add_argument("images", nargs="+", help="image files, folders (searched recursively) or globs")
    pred.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    pred.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default 16)")
    pred.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    pred.add_argument("--gradcam", metavar="DIR", help="also write a Grad-CAM heat map PNG per image into DIR")
    pred.add_argument("--quiet", action="store_true", help="no progress bar")
    pred.set_defaults(func=_cmd_predict)
    onnx = sub.add_parser("export-onnx", help="export a saved model to ONNX, its preprocessing documented beside it")
    onnx.add_argument("model", help="the saved model's folder")
    onnx.add_argument("out", help="the .onnx file to write")
    onnx.add_argument("--opset", type=int, default=17)
    onnx.set_defaults(func=_cmd_export_onnx)


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
    bench.add_argument("--budget-s", type=number(0, above=True),
                       help="wall-clock budget of the tutorial recipe (default 1200 s)")
    bench.add_argument("--threshold", type=number(0, 1), default=0.85,
                       help="validation accuracy to reach (default 0.85)")
    bench.add_argument("--skip-demo", action="store_true",
                       help="do not run the notebooks; read their runtime from the results file")
    bench.add_argument("--results", help="results JSON to read the demo runtime from (default outputs/results.json)")
    bench.add_argument("--quick", action="store_true", help="tiny sizes: checks the harness, measures nothing")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    bench.add_argument("--output", default=str(runner.PROJECT_ROOT / "outputs" / "bench.json"),
                       help="bench.json path; the markdown table goes beside it (default outputs/bench.json)")
    bench.set_defaults(func=_cmd_bench)

    _add_scale_out_commands(sub)
    _add_model_commands(sub)
    sub.add_parser("datasets", help="list the dataset registry").set_defaults(func=_cmd_datasets)
    fetch = sub.add_parser("fetch", help="download a registered dataset into the cache, with checksums")
    fetch.add_argument("name")
    fetch.set_defaults(func=_cmd_fetch)
    weights_help = ("download torchvision's batch-norm GoogLeNet weights (BACKBONE torchvision_googlenet) into the "
                    "torch cache; Google's GoogLeNet, the default, ships with the project")
    sub.add_parser("weights", help=weights_help).set_defaults(func=_cmd_weights)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        resume = (" from the last saved epoch" if getattr(args, "checkpoint", None) else
                  "; add --checkpoint FILE to be able to resume mid-run" if args.command == "train" else "")
        print(f"\nInterrupted. Re-run the same command to resume{resume}.", file=sys.stderr)
        return 130
