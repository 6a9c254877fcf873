"""Command line: ``python -m benchmark <command>`` (or ``fuse4seg-bench <command>``).

Each Snakemake rule calls one of these commands; they are equally usable by hand. Heavy imports (torch)
happen inside the commands so that ``--help`` and ``methods`` stay fast.

A bad input (data, config, run record, method file, a locked folder) ends a command with one line naming the
file or key and the problem, and exit status 2; ``--debug`` shows the traceback instead. SIGTERM (what SLURM and
Snakemake send on cancel or time-out) and SIGINT stop a command the way an error does, so every writer removes
its partial file on the way out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
from pathlib import Path


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err}): {text!r}") from err
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text!r}")
    return value


def cmd_synthesize(args: argparse.Namespace) -> None:
    """Write phantoms into a temporary folder, then move it into place and mark it complete."""
    from .data import DataError, synthetic

    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.force:
        raise DataError(f"{out}: exists and is not empty; pass --force to replace it with phantoms")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    if args.kind == "brats":
        synthetic.write_brats_phantoms(tmp, **args.options)
    else:
        synthetic.write_paired_phantoms(tmp, **args.options)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    (out / ".complete").write_text("phantoms written by `python -m benchmark synthesize`\n", encoding="utf-8")
    print(f"wrote {args.kind} phantoms to {out}")


def cmd_preprocess(args: argparse.Namespace) -> None:
    from .data.preprocess import preprocess_brats, preprocess_paired
    from .workflow import validate_dataset

    s = validate_dataset(args.settings)
    common = {"split_fractions": tuple(s["split_fractions"]), "seed": s["split_seed"]}
    if s["kind"] == "brats":
        paths = preprocess_brats(
            s["raw"], args.out, modalities=tuple(s["modalities"]), slice_size=tuple(s["slice_size"]),
            keep=s["keep"], label_convention=s["label_convention"], workers=args.workers, **common,
        )
    else:
        paths = preprocess_paired(
            s["raw"], args.out, anatomical=s["anatomical"], functional=s["functional"], size=s["size"],
            on_mismatch=s["on_mismatch"], **common,
        )
    for name, path in paths.items():
        print(f"{name}: {path}")


def _set_threads(args: argparse.Namespace) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def cmd_train(args: argparse.Namespace) -> None:
    from .record import RunConfig
    from .training.engines import train_run

    _set_threads(args)
    summary = train_run(RunConfig.read(args.config), Path(args.store), Path(args.out), device=args.device)
    print(json.dumps(summary, indent=1, default=str))


def cmd_fuse_store(args: argparse.Namespace) -> None:
    from .fused_store import fuse_splits

    _set_threads(args)
    for path in fuse_splits(Path(args.run), Path(args.store), args.splits, Path(args.out), batch_size=args.batch_size,
                            device=args.device):
        print(f"wrote {path}")


def cmd_train_follower(args: argparse.Namespace) -> None:
    from .record import FollowerRun
    from .training.engines import train_follower

    _set_threads(args)
    summary = train_follower(FollowerRun.read(args.config), Path(args.store), Path(args.out), device=args.device)
    print(json.dumps(summary, indent=1, default=str))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_run
    from .workflow import validate_section

    _set_threads(args)
    settings = validate_section(args.settings, "evaluation")
    for path in evaluate_run(Path(args.run), Path(args.store), settings, device=args.device):
        print(f"wrote {path}")


def cmd_fuse(args: argparse.Namespace) -> None:
    from .inference import fuse_files

    print(f"wrote {fuse_files(Path(args.run), Path(args.a), Path(args.b), Path(args.out), device=args.device)}")


def cmd_segment(args: argparse.Namespace) -> None:
    from .inference import segment_case

    print(f"wrote {segment_case(Path(args.run), Path(args.case), Path(args.out), device=args.device)}")


def cmd_render(args: argparse.Namespace) -> None:
    from .render import render_all

    runs = [Path(r) for r in args.runs] if args.runs else sorted(p.parent for p in Path(args.out).glob("*/*/seed*/config.json"))
    for path in render_all(runs, Path(args.out), context=args.context):
        print(f"wrote {path}")


def cmd_methods(args: argparse.Namespace) -> None:
    """List discovered methods and what each needs; with --check also import each one.

    A method whose required package is missing is listed as "skipped" with the reason (its workflow jobs are
    skipped too); only a broken method file or a failed import is an error (exit 1).
    """
    import importlib.util

    from .methods import discover_methods, load_method

    found, problems = discover_methods()
    failed = dict(problems)
    if args.params:
        _print_parameter_counts(found, failed)
    for name, info in found.items():
        missing = info.missing_reason()
        status = f"skipped: {missing}" if missing else ""
        if args.check and not missing:
            try:
                load_method(name)
                status = "imports"
            except Exception as err:  # report and go on: one broken method must not hide the others
                failed[name] = str(err)
                status = "FAILED"
        print(f"{name:20s} {info.kind:13s} {info.display_name:28s} {status}")
        for module, what in info.accelerators.items():
            found_it = importlib.util.find_spec(module) is not None
            print(f"{'':22s}optional {module}: {'installed' if found_it else 'not installed'} ({what})")
        for weight, what in info.weights.items():
            print(f"{'':22s}weights {weight}: {what} (config: weights.{name}.{weight}; none: from scratch)")
    for name, why in failed.items():
        print(f"problem: {name}: {why}", file=sys.stderr)
    if failed:
        raise SystemExit(1)


def _device_and_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="cpu, cuda or auto (default: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")


def _print_parameter_counts(found: dict, failed: dict) -> None:
    """Every method's networks at full size: parameters (frozen ones apart) beside the reference code's count."""
    from .methods import load_method

    print(f"{'method':20s} {'ours':>13s} {'frozen':>11s} {'reference':>13s} {'diff':>8s}  reference code")
    for name, info in found.items():
        if info.missing_reason():
            continue
        try:
            nets = load_method(name).networks()
        except Exception as err:  # report and go on
            failed[name] = f"cannot build at full size: {type(err).__name__}: {err}"
            continue
        params = [p for net in nets.values() for p in net.parameters()]
        ours = sum(p.numel() for p in params)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        ref = info.reference.get("parameters")
        diff = f"{100 * (ours - ref) / ref:+.1f}%" if ref else "-"
        where = " @ ".join(str(info.reference[k]) for k in ("repository", "commit") if info.reference.get(k))
        print(f"{name:20s} {ours:13,d} {frozen:11,d} {ref or 0:13,d} {diff:>8s}  {where}")
        if info.reference.get("notes"):
            print(f"{'':22s}{info.reference['notes']}")
    print()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark",
        description="Fuse4Seg benchmark suite: data, training, evaluation, inference and tables.",
    )
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")

    p = sub.add_parser("synthesize", help="write synthetic phantoms in a real dataset layout")
    p.add_argument("--kind", choices=["brats", "paired"], required=True)
    p.add_argument("--out", required=True, help="folder to create")
    p.add_argument("--force", action="store_true", help="replace --out if it exists and is not empty")
    p.add_argument("--options", type=_json_arg, default={}, help='phantom options as JSON, e.g. \'{"n_cases": 4}\'')
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("preprocess", help="raw dataset folder -> HDF5 slice stores and patient splits")
    p.add_argument("--settings", type=_json_arg, required=True, help="dataset settings as JSON (see the workflow config)")
    p.add_argument("--out", required=True, help="store folder ({train,val,test}.h5, splits.json)")
    p.add_argument("--workers", type=int, default=2, help="parallel case readers (default 2)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("train", help="train one run from its record (resumes if interrupted)")
    p.add_argument("--config", required=True, help="the run's config.json written by the workflow")
    p.add_argument("--store", required=True, help="store folder of the dataset")
    p.add_argument("--out", required=True, help="run folder (model.safetensors, run.json, train_log.csv)")
    _device_and_threads(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("fuse-store", help="fuse every slice of store splits with a trained run, once")
    p.add_argument("--run", required=True, help="run folder of a fusion or joint method")
    p.add_argument("--store", required=True, help="store folder of the dataset, e.g. results/brats/store")
    p.add_argument("--splits", nargs="+", choices=["train", "val", "test"], default=["test"])
    p.add_argument("--out", required=True, help="fused store folder, e.g. <run>/fused_store")
    p.add_argument("--batch-size", type=int, default=16)
    _device_and_threads(p)
    p.set_defaults(func=cmd_fuse_store)

    p = sub.add_parser("train-follower", help="train the shared follower on a run's fused store")
    p.add_argument("--config", required=True, help="the run's follower/config.json written by the workflow")
    p.add_argument("--store", required=True, help="the run's fused store folder (fused_store/)")
    p.add_argument("--out", required=True, help="the run's follower folder (follower/)")
    _device_and_threads(p)
    p.set_defaults(func=cmd_train_follower)

    p = sub.add_parser("evaluate", help="score a trained run on the test split of its store")
    p.add_argument("--run", required=True, help="run folder holding config.json and model.safetensors")
    p.add_argument("--store", required=True, help="store folder of the dataset")
    p.add_argument("--settings", type=_json_arg, default={},
                   help="evaluation settings as JSON (the workflow's evaluation section; defaults filled)")
    _device_and_threads(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("fuse", help="fuse one image pair with a trained run (the 'glass-box' image)")
    p.add_argument("--run", required=True, help="run folder of a fusion or joint method")
    p.add_argument("--a", required=True, help="anatomical image (PNG/JPEG, gray or RGB)")
    p.add_argument("--b", required=True, help="second image; colour is fused on Y and rebuilt with its Cb/Cr")
    p.add_argument("--out", required=True, help="fused image file; its suffix sets the format (.png, .jpg, ...)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_fuse)

    p = sub.add_parser("segment", help="segment one BraTS case folder into a NIfTI label map")
    p.add_argument("--run", required=True, help="run folder of a BraTS run")
    p.add_argument("--case", required=True, help="case folder with the modality NIfTI files")
    p.add_argument("--out", required=True, help="output .nii.gz (original geometry and label values)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("render", help="Tables 1-3 (CSV/Markdown/LaTeX, beside the paper) and figures")
    p.add_argument("--out", default="results", help="results root; tables/ and figures/ are written here")
    p.add_argument("--runs", nargs="*", help="run folders (default: every */*/seed*/config.json under --out)")
    p.add_argument("--context", type=_json_arg, default={},
                   help="dataset labels and skipped methods as JSON (written by the workflow)")
    p.set_defaults(func=cmd_render)

    p = sub.add_parser("methods", help="list the method plugins found in methods/")
    p.add_argument("--check", action="store_true", help="also import each method and report failures")
    p.add_argument("--params", action="store_true",
                   help="build every method at full size and print its parameter count beside the reference's")
    p.set_defaults(func=cmd_methods)

    from metrics.cli import add_parser as add_metrics_parser

    add_metrics_parser(sub)
    return parser


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived; raised where the main thread is, so that every writer cleans up on the way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, _frame) -> None:
    raise Stopped(signum)


def run_command(args: argparse.Namespace, input_errors: tuple[type[BaseException], ...]):
    """Run ``args.func(args)`` as a command: an error of ``input_errors`` prints one line (``args.debug``: the
    traceback) and exits with status 2; SIGTERM / SIGINT end it with status 128 + the signal's number after the
    writers under way removed their partial files."""
    previous = {signum: signal.signal(signum, _stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        return args.func(args)
    except input_errors as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except Stopped as stop:
        print(f"stopped by {stop}", file=sys.stderr)
        raise SystemExit(128 + stop.signum) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _input_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean a bad input, not a bug: reported in one line with exit status 2."""
    from metrics.cli import InputError

    from .atomic import FolderLockedError
    from .data import DataError
    from .methods import MethodError
    from .record import RecordError
    from .workflow import ConfigError

    return DataError, ConfigError, RecordError, MethodError, FolderLockedError, InputError


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    run_command(args, _input_errors())


if __name__ == "__main__":
    main()
