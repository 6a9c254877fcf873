"""Command line of the metrics: ``python -m metrics fusion ...``, also ``python -m benchmark metrics fusion ...``.

``fusion`` scores every image of a fused folder against the source images of the same name and writes
one CSV row per image (``name`` then EN, SD, MI, PSNR, SF, Qabf, SSIM), plus a JSON sidecar naming the
convention; both are written to temporary files and renamed, so a half-written table never appears.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

from metrics.fusion import CONVENTIONS, METRICS, get_convention, score_folder


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the target folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fusion(args: argparse.Namespace) -> int:
    try:
        table = score_folder(args.a, args.b, args.fused, convention=args.convention)
    except (ValueError, OSError) as err:
        raise SystemExit(f"metrics fusion: {err}") from None
    out = Path(args.out)
    _write_atomic(out, lambda tmp: table.to_csv(tmp, index=False, float_format="%.17g"))
    settings = {"convention": args.convention, "n_images": len(table),
                "settings": dataclasses.asdict(get_convention(args.convention))}
    _write_atomic(out.with_suffix(".json"), lambda tmp: tmp.write_text(json.dumps(settings, indent=1) + "\n"))
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
    p.add_argument("--convention", default="fuse4seg", choices=sorted(CONVENTIONS),
                   help="metric convention (default fuse4seg; see docs/metrics.md)")
    p.add_argument("--out", required=True, type=Path, help="CSV to write; a .json sidecar records the convention")
    p.set_defaults(func=_fusion)


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register the ``metrics`` command (with its ``fusion`` sub-command) on a parent CLI."""
    parser = subparsers.add_parser("metrics", help="fusion quality metrics of image folders")
    _configure(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m metrics", description="Fuse4Seg metrics on image folders.")
    _configure(parser)
    args = parser.parse_args(argv)
    return args.func(args)
