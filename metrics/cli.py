"""Command line of the metrics: ``python -m metrics fusion ...``, also ``python -m benchmark metrics fusion ...``.

``fusion`` scores every image of a fused folder against the source images of the same name and writes
one CSV row per image (``name`` then EN, SD, MI, PSNR, SF, Qabf, SSIM), plus a JSON sidecar naming the
convention; both are written to temporary files and renamed, so a half-written table never appears. Every source
pair (a stem in both source folders) needs its fused image: a missing one is an error naming it, unless
``--allow-missing``, which lists the missing images (on stderr and in the sidecar) and scores the rest.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from benchmark.atomic import write_atomic, write_text_atomic
from benchmark.cli import run_command

SHOWN = 10  # missing names listed in a message; the sidecar lists them all


class InputError(ValueError):
    """Bad input folders or files of a metrics command (the message names them)."""


def missing_fused(a_dir: Path, b_dir: Path, fused_dir: Path) -> list[str]:
    """Stems of the source pairs (in both source folders) that have no fused image."""
    from metrics.fusion import _images_by_stem

    pairs = set(_images_by_stem(a_dir)) & set(_images_by_stem(b_dir))
    return sorted(pairs - set(_images_by_stem(fused_dir)))


def _fusion(args: argparse.Namespace) -> int:
    from metrics.fusion import METRICS, get_convention, score_folder  # numba: only when scoring

    try:
        convention = get_convention(args.convention)
        missing = missing_fused(args.a, args.b, args.fused)
        if missing and not args.allow_missing:
            shown = ", ".join(missing[:SHOWN]) + (f" and {len(missing) - SHOWN} more" if len(missing) > SHOWN else "")
            raise InputError(f"metrics fusion: {args.fused}: no fused image for {len(missing)} source pair(s): "
                             f"{shown} (pass --allow-missing to score the fused images present)")
        table = score_folder(args.a, args.b, args.fused, convention=args.convention)
    except InputError:
        raise
    except (ValueError, OSError) as err:
        raise InputError(f"metrics fusion: {err}") from err
    if missing:
        print(f"warning: {len(missing)} source pair(s) without a fused image, not scored: {', '.join(missing)}",
              file=sys.stderr)
    out = Path(args.out)
    write_atomic(out, lambda tmp: table.to_csv(tmp, index=False, float_format="%.17g"))
    settings = {"convention": args.convention, "n_images": len(table), "missing": missing,
                "settings": dataclasses.asdict(convention)}
    write_text_atomic(out.with_suffix(".json"), json.dumps(settings, indent=1) + "\n")
    means = table[list(METRICS)].mean()
    print(f"wrote {out} ({len(table)} images, convention {args.convention})")
    print("mean  " + "  ".join(f"{m} {means[m]:.4f}" for m in METRICS))
    return 0


def _configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="metrics_command", required=True, metavar="command")
    p = sub.add_parser("fusion", help="score fused images against their sources, one CSV row per image")
    p.add_argument("--a", required=True, type=Path, help="folder of source A images (e.g. MRI)")
    p.add_argument("--b", required=True, type=Path, help="folder of source B images (colour is scored on Y)")
    p.add_argument("--fused", required=True, type=Path, help="folder of fused images; names (stems) pick the sources")
    p.add_argument("--convention", default="fuse4seg",
                   help="metric convention (default fuse4seg; the others: docs/metrics.md)")
    p.add_argument("--out", required=True, type=Path, help="CSV to write; a .json sidecar records the convention")
    p.add_argument("--allow-missing", action="store_true",
                   help="score the fused images present when some source pairs have none (they are listed)")
    p.set_defaults(func=_fusion)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``metrics`` command (with its ``fusion`` sub-command) on a parent CLI."""
    parser = subparsers.add_parser("metrics", help="fusion quality metrics of image folders")
    _configure(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metrics", description="Fuse4Seg metrics on image folders.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error, not just its line")
    _configure(parser)
    return run_command(parser.parse_args(argv), (InputError,))
