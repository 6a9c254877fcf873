"""The command lines as a user meets them: one-line errors with exit status 2 (``--debug``: the traceback), the
label_convention setting, locked store folders, signals, output formats, existing folders, missing fused images."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from benchmark import cli
from benchmark.atomic import folder_lock
from benchmark.data import DataError
from benchmark.data.synthetic import write_brats_phantoms, write_paired_phantoms
from benchmark.training.engines import train_run
from benchmark.workflow import Plan, deep_merge, validate_config

from conftest import DEFAULT_CONFIG, REPO, SCHEMA, quiet, tiny_plan


def _main(argv: list[str], capsys) -> tuple[int, list[str]]:
    """Exit status and stderr lines of an in-process command (progress bars left out)."""
    try:
        cli.main(argv)
        code = 0
    except SystemExit as stop:
        code = stop.code
    lines = capsys.readouterr().err.splitlines()
    return code, [line for line in lines if line.strip() and "%|" not in line]


@pytest.fixture(scope="module")
def raw_brats(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    write_brats_phantoms(root, 3, seed=1, shape=(24, 24, 6))
    return root


def _brats_settings(raw: Path, **values) -> str:
    """The preprocess command's settings as the workflow writes them (Plan.preprocess_settings)."""
    config = deep_merge(yaml.safe_load(DEFAULT_CONFIG.read_text()), {"datasets": {"brats": {
        "source": "folder", "path": str(raw), "slice_size": [16, 16], "split_fractions": [0.34, 0.33, 0.33],
        **values}}})
    return json.dumps(Plan(validate_config(config, SCHEMA)).preprocess_settings("brats"))


def test_a_data_error_is_one_line_and_exit_2_and_debug_shows_the_traceback(raw_brats, tmp_path, capsys):
    """Issue 12, defect 8: the DataError's message came last under a 44-line traceback."""
    raw = Path(shutil.copytree(raw_brats, tmp_path / "raw"))
    flair = raw / "Phantom_001" / "Phantom_001_flair.nii.gz"
    flair.write_bytes(flair.read_bytes()[:300])
    argv = ["preprocess", "--settings", _brats_settings(raw), "--out", str(tmp_path / "store"), "--workers", "1"]
    code, err = _main(argv, capsys)
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {flair}: not a readable NIfTI-1 file")
    with pytest.raises(DataError, match="Phantom_001_flair.nii.gz"):
        cli.main(["--debug", *argv])


def test_a_bad_setting_names_its_key(tmp_path, capsys):
    settings = {"kind": "brats", "source": "folder", "raw": str(tmp_path), "split_fractions": [0.5, 0.2, 0.2],
                "keep": "all"}
    code, err = _main(["preprocess", "--settings", json.dumps(settings), "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and err[0] == "error: invalid dataset settings:"
    assert any(line.startswith("  settings.keep: 'all' is not valid") for line in err)
    code, err = _main(["preprocess", "--settings", json.dumps({**settings, "keep": "brain"}), "--out",
                       str(tmp_path / "s")], capsys)
    assert code == 2 and err[1] == "  settings.split_fractions: [0.5, 0.2, 0.2] sum to 0.9, not 1"


def test_the_label_convention_hint_can_be_followed(raw_brats, tmp_path, capsys):
    """Issue 12, defect 7: the hint named label_convention='brats2023', which the settings and schema refused."""
    raw = Path(shutil.copytree(raw_brats, tmp_path / "raw"))
    for seg in raw.glob("*/*_seg.nii.gz"):  # BraTS 2023 label values under the 2018 file naming
        image = nib.load(seg)
        data = np.asanyarray(image.dataobj)
        nib.save(nib.Nifti1Image(np.where(data == 4, 3, data).astype(np.uint8), image.affine), seg)
    out = tmp_path / "store"
    code, err = _main(["preprocess", "--settings", _brats_settings(raw), "--out", str(out)], capsys)
    assert code == 2 and "set the dataset's label_convention to 'brats2023'" in err[0]
    code, _ = _main(["preprocess", "--settings", _brats_settings(raw, label_convention="brats2023"), "--out",
                     str(out)], capsys)
    assert code == 0
    with h5py.File(out / "train.h5") as f:
        assert f.attrs["label_convention"] == "brats2023" and f["labels"][:].max() == 3


def test_a_locked_store_folder_stops_a_second_preprocess(raw_brats, tmp_path, capsys):
    """Issue 12, defect 6: two preprocess runs into one folder, the last silently won."""
    out = tmp_path / "store"
    with folder_lock(out, "preprocess"):
        code, err = _main(["preprocess", "--settings", _brats_settings(raw_brats), "--out", str(out)], capsys)
    assert code == 2 and len(err) == 1
    assert f"error: {out}: in use by preprocess (pid {os.getpid()} on " in err[0]
    assert not (out / "train.h5").exists()
    assert _main(["preprocess", "--settings", _brats_settings(raw_brats), "--out", str(out)], capsys)[0] == 0


WRITER = textwrap.dedent("""
    import argparse, sys, time
    from pathlib import Path
    from benchmark.cli import run_command

    def write(tmp):
        tmp.write_bytes(b"half")
        print("writing", flush=True)
        # Short sleeps, as a writer's loop: a signal the kernel hands to another thread of the child does not
        # interrupt a long sleep of the main thread, whose handler then runs only when that sleep ends.
        for _ in range(600):
            time.sleep(0.1)

    def work(args):
        if sys.argv[2] == "store":
            import numpy as np
            from benchmark.data.store import StoreWriter
            with StoreWriter(Path(sys.argv[1]) / "train.h5", kind="paired", modalities=["a", "b"], slice_size=(4, 4),
                             labels=False) as writer:
                writer.append(np.zeros((1, 2, 4, 4), np.float32), patient=["p"], slice_index=[0], name=["n"])
                write(Path(sys.argv[1]) / "other")
        else:
            from benchmark.atomic import write_atomic
            write_atomic(Path(sys.argv[1]) / "table.csv", write)

    run_command(argparse.Namespace(func=work, debug=False), ())
""")


@pytest.mark.parametrize("signum,writer", [(signal.SIGTERM, "store"), (signal.SIGINT, "atomic")])
def test_a_signalled_writer_leaves_no_partial_file(tmp_path, signum, writer):
    """Issue 12, defect 6: SIGTERM (SLURM's cancel or time-out) killed writers without their clean-up."""
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), writer], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stdout.readline().strip() == "writing"
    assert any(p.name.endswith(".partial.h5" if writer == "store" else ".partial.csv") for p in tmp_path.iterdir())
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum, err
    assert f"stopped by {signal.Signals(signum).name}" in err
    assert [p.name for p in tmp_path.iterdir() if p.name != "other"] == []


def test_fuse_writes_the_format_its_suffix_names(stores, tmp_path, capsys):
    """Issue 12, defect 12: ``fuse --out f.jpg`` wrote PNG bytes."""
    plan = tiny_plan()
    run = tmp_path / "run"
    record = plan.record(plan.find("harvard_mri_spect", "average", 0))
    record.write(run / "config.json")
    train_run(record, stores["harvard_mri_spect"], run, device="cpu", progress=quiet)
    mri = sorted((stores["raw_spect"] / "MRI").glob("*.png"))[0]
    argv = ["fuse", "--run", str(run), "--a", str(mri), "--b", str(stores["raw_spect"] / "SPECT" / mri.name),
            "--device", "cpu", "--out"]
    for name, magic, mode in (("f.jpg", b"\xff\xd8\xff", "JPEG"), ("f.png", b"\x89PNG", "PNG")):
        assert _main([*argv, str(tmp_path / name)], capsys)[0] == 0
        assert (tmp_path / name).read_bytes().startswith(magic) and Image.open(tmp_path / name).format == mode
    code, err = _main([*argv, str(tmp_path / "f.xyz")], capsys)
    assert code == 2 and "f.xyz: cannot tell an image format" in err[0]


def test_synthesize_keeps_an_existing_folder_without_force(tmp_path, capsys):
    """Issue 12, defect 12: ``synthesize --out DIR`` deleted an existing folder's files."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    argv = ["synthesize", "--kind", "paired", "--out", str(out), "--options",
            json.dumps({"pair": "CT", "n_studies": 1, "slices_per_study": 1, "size": 16})]
    code, err = _main(argv, capsys)
    assert code == 2 and "exists and is not empty; pass --force" in err[0]
    assert (out / "precious.txt").read_text() == "keep me"
    assert _main([*argv, "--force"], capsys)[0] == 0
    assert sorted(p.name for p in out.iterdir()) == [".complete", "CT", "MRI"]


def test_metrics_fusion_names_missing_fused_images_or_lists_them(tmp_path, capsys):
    """Issue 12, defect 5: one missing fused image gave exit 0 and the mean over the rest, without a word."""
    root = write_paired_phantoms(tmp_path / "pairs", "CT", n_studies=2, slices_per_study=2, size=16)
    fused = tmp_path / "fused"
    fused.mkdir()
    for path in sorted((root / "MRI").glob("*.png"))[1:]:  # the first pair has no fused image
        shutil.copy(path, fused / path.name)
    out = tmp_path / "scores.csv"
    argv = ["metrics", "fusion", "--a", str(root / "MRI"), "--b", str(root / "CT"), "--fused", str(fused),
            "--out", str(out)]
    code, err = _main(argv, capsys)
    assert code == 2 and len(err) == 1
    assert f"error: metrics fusion: {fused}: no fused image for 1 source pair(s): 1001 (pass --allow-missing" in err[0]
    assert not out.exists()
    code, err = _main([*argv, "--allow-missing"], capsys)
    assert code == 0 and "1 source pair(s) without a fused image, not scored: 1001" in err[0]
    assert list(pd.read_csv(out, dtype={"name": str})["name"]) == ["1002", "2001", "2002"]
    assert json.loads(out.with_suffix(".json").read_text())["missing"] == ["1001"]

