"""The `synthcat` command line: parses arguments, reads the environment, maps errors to exit codes.

Exit codes (DESIGN.md): 0 success, 2 bad input or usage, 3 gate/validation failed, 1 internal.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import sys
from datetime import date, datetime, timezone
from pathlib import Path

from pipeline.errors import BadInputError, SynthcatError

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def _quiet_libraries() -> None:
    """Offline by default, and no per-component progress bars from the model libraries."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Ray Data's own logs and bars would interleave with ours; its errors still raise.
    os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("ray", "ray.data", "great_expectations"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _run_date(text: str) -> str:
    try:
        return date.fromisoformat(text).isoformat()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-26") from None


def _run_id(text: str) -> str:
    if not _RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r}: use letters, digits and _ . - (it names a folder)")
    return text


def _json_out(text: str) -> str:
    """A `--json FILE` whose folder exists: checked before the work, not after it."""
    if not Path(text).parent.is_dir() or Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: give a file in an existing folder")
    return text


def _at_least(minimum: int, kind=int):
    """An argparse type: a whole number (`kind=float`: any finite number) of at least `minimum`."""
    def number(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = minimum - 1
        if not minimum <= value < float("inf"):  # NaN and infinity too
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a {'whole number' if kind is int else 'number'} of at least {minimum}")
        return value

    return number


def _models_dir(config_value: str | None) -> Path:
    from pipeline.models.presets import DEFAULT_MODELS_DIR

    return Path(config_value or os.environ.get("SYNTHCAT_MODELS_DIR") or DEFAULT_MODELS_DIR)


def _where_it_stopped(request) -> str:
    """What a run that stopped early has published: nothing, or all of it (then only the dataset
    card and the staging folder's removal are left, which its resume does)."""
    if (request.dataset_root / "_runs" / request.run_id / "manifest.json").is_file():
        return f"run {request.run_id} is published, its clean-up is not finished"
    return "nothing was published"


def cmd_run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from pipeline.config import load_job_config
    from pipeline.cost import describe_cost
    from pipeline.run import RunRequest, run_job

    config = load_job_config(args.config)
    if args.skus is not None and not args.skus.replace(",", "").strip():  # "," would mean every SKU
        raise BadInputError(f"--skus {args.skus!r}: give SKUs separated by commas, or leave it out for every SKU")
    if not Path(args.manifest).exists():
        raise BadInputError(f"{args.manifest}: manifest not found")
    run_date = args.run_date or datetime.now(timezone.utc).date().isoformat()
    run_id = args.run_id or f"run-{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"
    request = RunRequest(
        manifest=Path(args.manifest), config=config, out=Path(args.out or config.out),
        run_date=run_date, run_id=run_id, models_dir=_models_dir(config.models_dir),
        skus=tuple(s.strip() for s in args.skus.split(",") if s.strip()) if args.skus else (),
        ray_address=os.environ.get("RAY_ADDRESS") or None, show_progress=not args.no_progress,
    )
    try:
        summary = run_job(request)
    except OSError as exc:
        from pipeline.faults import is_disk_full

        if not is_disk_full(exc):
            raise
        where = f" writing {exc.filename}" if getattr(exc, "filename", None) else ""
        raise SynthcatError(f"no space left on device{where}: {_where_it_stopped(request)}; free space under "
                            f"{request.out} and resume with --run-id {run_id}") from None
    except KeyboardInterrupt:
        print(f"synthcat: interrupted: {_where_it_stopped(request)}; resume with --run-id {run_id}", file=sys.stderr)
        return 130
    console = Console(stderr=False, highlight=False, soft_wrap=True)  # paths on one line in a CI log too
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary.reasons.items())) or "none"
    console.print(f"[bold green]published[/] run {summary.run_id} (run_date {summary.run_date})")
    console.print(f"  items {summary.items} · generated {summary.generated} "
                  f"(resumed shards {summary.resumed_shards}) · accepted {summary.accepted} · "
                  f"rejected {summary.rejected} ({reasons}) · regenerated {summary.regenerated} · "
                  f"bad manifest rows {summary.bad_rows}")
    console.print(f"  {summary.images_per_s:.2f} images/s · {summary.seconds:.1f} s in all")
    if describe_cost(summary.cost):
        console.print(f"  {describe_cost(summary.cost)}")
    console.print(f"  dataset  {summary.dataset_root}")
    console.print(f"  manifest {summary.manifest_path}")
    console.print(f"  report   {summary.report_path}")
    return 0


def cmd_shards(args: argparse.Namespace) -> int:
    """Generate shards of a prepared run (what a Ray job runs on the cluster)."""
    from pipeline.steps.generate import generate_shards

    address = os.environ.get("RAY_ADDRESS") or None
    if address and address.startswith(("http://", "https://")):
        address = None  # inside a Ray job: never submit again, connect to this cluster instead
    shards = [s for s in args.shards.split(",") if s] if args.shards else None
    result = generate_shards(Path(args.staging), shards, ray_address=address, show_progress=False)
    print(json.dumps(result))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.config import load_job_config
    from pipeline.ingest import read_manifest

    config = load_job_config(args.config)
    rejects_csv = Path(args.rejects_csv) if args.rejects_csv else None
    if rejects_csv and (rejects_csv.is_dir() or not rejects_csv.parent.is_dir()):
        raise BadInputError(f"--rejects-csv {rejects_csv}: not a file in an existing folder")
    if rejects_csv and rejects_csv.exists() and any(p and Path(p).exists() and rejects_csv.samefile(p)
                                                    for p in (args.path, args.config)):
        raise BadInputError(f"--rejects-csv {rejects_csv} is an input of this command; it would be overwritten")
    result = read_manifest(args.path, config)
    problems = result.problems()
    if rejects_csv:  # for the operator's spreadsheet: cells are escaped, never formulas
        from pipeline.csvsafe import write_csv

        write_csv(rejects_csv, result.rejects.to_pylist(), result.rejects.column_names)
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{args.path}: {result.bad_rows} of {result.total_rows} rows are bad", file=sys.stderr)
        return BadInputError.exit_code
    print(f"{args.path}: {result.total_rows} rows, all good")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from pipeline.models.presets import describe_presets

    presets = describe_presets(_models_dir(None))
    if args.json:
        print(json.dumps(presets, indent=2))
    else:
        for p in presets:
            state = "ready" if p["available"] else "on-demand" if p.get("on_demand") else "missing"
            print(f"{p['name']:<14} {state:<9} {p['path']}  (scorer {p['scorer']}: {p['clip_path']})")
    return 0


def cmd_index_build(args: argparse.Namespace) -> int:
    from pipeline.models.presets import resolve_scorer
    from pipeline.reference import build_reference_index

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise BadInputError(f"--out {args.out}: a file, not a folder for the index")
    scorer = resolve_scorer(args.scorer, _models_dir(None))
    description = build_reference_index(Path(args.source), Path(args.out), scorer.path)
    print(json.dumps(description, indent=2))
    return 0


def cmd_bench_index(args: argparse.Namespace) -> int:
    """`synthcat bench index`: build/query time and recall of the embedding index by size."""
    from pipeline.bench_index import run_index_bench

    try:
        sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        raise BadInputError(f"--sizes {args.sizes!r}: give sizes like 100000,1000000") from None
    if not sizes or min(sizes) < 2:
        raise BadInputError(f"--sizes {args.sizes!r}: give sizes of at least 2 vectors")
    record = run_index_bench(sizes, data=args.data, dim=args.dim, queries=args.queries,
                             exact_queries=args.exact_queries, centres=args.centres)
    text = json.dumps(record, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.target == "index":
        return cmd_bench_index(args)
    from pipeline.bench import run_bench

    def write(record: dict) -> str:
        text = json.dumps(record, indent=2)
        if args.json:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
        return text

    def partial(record: dict) -> None:  # naive and engine figures survive an end-to-end run cut short
        write(record)
        print(f"bench: naive {record['naive_img_s']:.2f} img/s, engine {record['engine_img_s']:.2f} img/s "
              "(its first half); end to end next, then the engine's second half", file=sys.stderr, flush=True)

    record = run_bench(args.preset, _models_dir(None), Path(args.manifest), items=args.items,
                       batch_size=args.batch_size, num_gpus=args.gpus, peak_tflops=args.peak_tflops,
                       naive_items=args.naive_items, compile=args.compile, compile_scope=args.compile_scope,
                       on_partial=partial)
    print(write(record))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pipeline.report import report_from_run_dir

    path = report_from_run_dir(Path(args.run_dir), Path(args.out) if args.out else None)
    print(path)
    return 0


def cmd_eval_memorization(args: argparse.Namespace) -> int:
    from pipeline.memorization import evaluate_memorization

    result = evaluate_memorization(_models_dir(None), seeds_per_planted=args.seeds, n_ordinary=args.ordinary,
                                   n_calibration=args.calibration, steps=args.steps)
    text = json.dumps(result, indent=2)
    if args.json:
        Path(args.json).write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


def _forward(module: str):
    """A subcommand that hands its remaining arguments to a module's own `main(argv)`."""
    def run(args: argparse.Namespace) -> int:
        import importlib

        return importlib.import_module(module).main(args.rest)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthcat", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="generate, gate, validate and publish a dataset from a manifest")
    run.add_argument("--manifest", required=True, help="catalog manifest (CSV, JSONL or Parquet)")
    run.add_argument("--config", help="job config YAML (default: built-in defaults)")
    run.add_argument("--out", help="output root (default: the config's `out`)")
    run.add_argument("--run-date", type=_run_date, help="partition date YYYY-MM-DD (default: today, UTC)")
    run.add_argument("--run-id", type=_run_id, help="run id; pass an earlier one to resume that run")
    run.add_argument("--skus", help="comma-separated SKUs to run (default: every SKU)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    shards = sub.add_parser("shards", help="(internal) generate shards of a prepared run; used by Ray jobs")
    shards.add_argument("staging", help="the run's staging folder (<out>/<dataset>/_staging/<run_id>)")
    shards.add_argument("--shards", help="comma-separated shard ids (default: all not yet done)")
    shards.set_defaults(func=cmd_shards)

    validate = sub.add_parser("validate", help="check a manifest, write nothing, list every bad row")
    validate.add_argument("path", help="catalog manifest (CSV, JSONL or Parquet)")
    validate.add_argument("--config", help="job config YAML (column mapping, default markets)")
    validate.add_argument("--rejects-csv", metavar="FILE",
                          help="also write every problem (line, field, reason, raw row) to this CSV")
    validate.set_defaults(func=cmd_validate)

    report = sub.add_parser("report", help="rebuild the HTML report of a published run")
    report.add_argument("run_dir", help="the run's folder: <out>/<dataset>/_runs/<run_id>")
    report.add_argument("--out", help="where to write it (default: report.html in the run folder)")
    report.set_defaults(func=cmd_report)

    evaluation = sub.add_parser("eval", help="evaluations of the gates against ground truth")
    eval_sub = evaluation.add_subparsers(dest="eval_command", required=True)
    memorization = eval_sub.add_parser("memorization", help="planted vs ordinary prompts: AUC, TPR at 1%% FPR")
    memorization.add_argument("--json", type=_json_out, help="also write the figures to this file")
    memorization.add_argument("--seeds", type=_at_least(1), default=8, help="seeds per planted caption (default: 8)")
    memorization.add_argument("--ordinary", type=_at_least(2), default=200, help="ordinary prompts (default: 200)")
    memorization.add_argument("--calibration", type=_at_least(2), default=200,
                              help="ordinary prompts the thresholds and z-scores are calibrated on (default: 200)")
    memorization.add_argument("--steps", type=_at_least(1), help="denoising steps (default: the preset's)")
    memorization.set_defaults(func=cmd_eval_memorization)

    index = sub.add_parser("index", help="the memorization reference index")
    index_sub = index.add_subparsers(dest="index_command", required=True)
    build = index_sub.add_parser("build", help="embed a folder or Parquet of reference images")
    build.add_argument("source", help="folder of images, or a Parquet file with an `image` column")
    build.add_argument("--out", required=True, help="index folder (index.json and the build's index-<build>.parquet, .faiss)")
    build.add_argument("--scorer", default="tiny", help="open_clip scorer preset (default: tiny)")
    build.set_defaults(func=cmd_index_build)

    bench = sub.add_parser("bench", help="images/s: naive diffusers loop vs engine vs end to end; "
                                         "`bench index`: the embedding index by size")
    bench.add_argument("target", nargs="?", choices=["images", "index"], default="images",
                       help="images (default) or index (build/query/recall of the embedding index)")
    bench.add_argument("--sizes", default="100000,1000000", help="index: reference sizes (default: 100000,1000000)")
    bench.add_argument("--queries", type=_at_least(1), default=100_000, help="index: queries per size (default: 100000)")
    bench.add_argument("--exact-queries", type=_at_least(1), default=1000,
                       help="index: queries checked against exact search for recall (default: 1000)")
    bench.add_argument("--dim", type=_at_least(1), default=512, help="index: embedding dimension (default: 512)")
    bench.add_argument("--data", choices=["clustered", "uniform"], default="clustered",
                       help="index: synthetic embeddings (default: clustered, see bench/README.md)")
    bench.add_argument("--centres", type=_at_least(1), default=4096, help="index: clusters of the clustered data")
    bench.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    bench.add_argument("--json", type=_json_out, help="also write the figures to this file")
    bench.add_argument("--items", type=_at_least(1), default=32, help="items per measurement (default: 32)")
    bench.add_argument("--batch-size", type=_at_least(1), default=16, help="engine batch size (default: 16)")
    bench.add_argument("--gpus", type=_at_least(0, float), default=0, help="GPUs per generate/score actor (default: 0)")
    bench.add_argument("--peak-tflops", type=float, help="device peak for the FLOP-bound share")
    bench.add_argument("--naive-items", type=_at_least(1), help="items of the naive batch-1 loop, spread over the plan with its share of photo rows (default: all)")
    bench.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                       help="torch.compile the UNet and VAE decoder (default: on for CUDA, off for CPU)")
    bench.add_argument("--compile-scope", choices=["model", "blocks"], default="model",
                       help="the UNet whole, or only its repeated transformer blocks (regional; default: model)")
    bench.add_argument("--manifest", default=str(Path(__file__).resolve().parents[1] / "examples" / "catalog.csv"),
                       help="catalog whose items are generated (default: the example)")
    bench.set_defaults(func=cmd_bench)

    models = sub.add_parser("models", help="list model presets and their local folders")
    models.add_argument("--json", action="store_true", help="print a JSON list")
    models.set_defaults(func=cmd_models)
    models_sub = models.add_subparsers(dest="models_command")
    train = models_sub.add_parser("train", add_help=False,
                                  help="train the embedded tiny models from scratch (see MODEL_CARD.md)")
    train.set_defaults(func=_forward("pipeline.models.train"))
    evaluate = models_sub.add_parser("eval", add_help=False, help="measure the tiny models' quality")
    evaluate.set_defaults(func=_forward("pipeline.models.evaluate"))
    return parser


def main(argv: list[str] | None = None) -> int:
    args, rest = build_parser().parse_known_args(argv)
    if rest and not getattr(args, "models_command", None):
        build_parser().parse_args(argv)  # unknown arguments: argparse's usage error (exit 2)
    args.rest = rest
    _quiet_libraries()
    try:
        return args.func(args)
    except SynthcatError as exc:
        print(f"synthcat: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("synthcat: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
