"""metrics.segmentation: confusion counts, Dice/IoU of labels and regions, empty rules, aggregations, HD95."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

from metrics import segmentation as seg

# A 2 x 4 slice with every class: rows = reference, columns = prediction in the confusion matrix.
REF = np.array([[0, 1, 2, 3], [1, 1, 2, 3]], np.uint8)
PRED = np.array([[0, 1, 2, 2], [1, 3, 2, 3]], np.uint8)


def test_confusion_matrix_by_hand():
    expected = np.zeros((4, 4), int)
    expected[0, 0], expected[1, 1], expected[1, 3], expected[2, 2], expected[3, 2], expected[3, 3] = 1, 2, 1, 2, 1, 1
    assert np.array_equal(seg.confusion_matrix(PRED, REF), expected)
    stacked = seg.slice_confusions(np.stack([PRED, REF]), np.stack([REF, REF]))
    assert np.array_equal(stacked[0], expected) and np.array_equal(stacked[1], np.diag([1, 3, 2, 2]))


def test_dice_and_iou_of_labels_and_regions_by_hand():
    s = seg.dice_iou(PRED, REF, empty_rule="nan")
    assert s["NCR_dice"] == pytest.approx(0.8) and s["NCR_iou"] == pytest.approx(2 / 3)
    assert s["ED_dice"] == pytest.approx(0.8) and s["ED_iou"] == pytest.approx(2 / 3)
    assert s["ET_dice"] == pytest.approx(0.5) and s["ET_iou"] == pytest.approx(1 / 3)
    assert s["TC_dice"] == pytest.approx(8 / 9) and s["TC_iou"] == pytest.approx(0.8)  # {1, 3}
    assert s["WT_dice"] == 1.0 and s["WT_iou"] == 1.0  # {1, 2, 3}
    assert s["mean_dice"] == pytest.approx(0.7) and s["mean_iou"] == pytest.approx(5 / 9)
    assert list(s) == seg.SCORE_COLUMNS


def test_dice_iou_agrees_with_per_class_masks_on_a_volume():
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 4, (6, 20, 24))
    pred = np.where(rng.random(ref.shape) < 0.3, rng.integers(0, 4, ref.shape), ref)
    s = seg.dice_iou(pred, ref, empty_rule="one")
    for name, classes in {**seg.LABELS, **seg.REGIONS}.items():
        p, r = np.isin(pred, classes), np.isin(ref, classes)
        assert s[f"{name}_dice"] == pytest.approx(2 * (p & r).sum() / (p.sum() + r.sum()))
        assert s[f"{name}_iou"] == pytest.approx((p & r).sum() / (p | r).sum())


@pytest.mark.parametrize("rule, both_empty", [("one", 1.0), ("nan", math.nan)])
def test_empty_rules(rule, both_empty):
    background = np.zeros((3, 3), np.uint8)
    only_pred = background.copy()
    only_pred[1, 1] = 3
    both = seg.dice_iou(background, background, empty_rule=rule)
    assert (math.isnan(both["ET_dice"]) if math.isnan(both_empty) else both["ET_dice"] == both_empty)
    assert (math.isnan(both["mean_iou"]) if math.isnan(both_empty) else both["mean_iou"] == both_empty)
    assert seg.dice_iou(only_pred, background, empty_rule=rule)["ET_dice"] == 0.0  # reference empty
    assert seg.dice_iou(background, only_pred, empty_rule=rule)["ET_iou"] == 0.0  # prediction empty


def test_mean_skips_nan_labels_under_the_nan_rule():
    ref = np.array([[1, 1, 0, 0]], np.uint8)
    pred = np.array([[1, 0, 0, 0]], np.uint8)  # NCR Dice 2/3, ED and ET absent from both
    assert seg.dice_iou(pred, ref, empty_rule="nan")["mean_dice"] == pytest.approx(2 / 3)
    assert seg.dice_iou(pred, ref, empty_rule="one")["mean_dice"] == pytest.approx((2 / 3 + 1 + 1) / 3)


def _toy():
    """Four 2 x 4 slices of two patients, ET only: the aggregation changes ET Dice from 0.17 to 0.38."""
    ref = np.zeros((4, 2, 4), np.uint8)
    pred = np.zeros((4, 2, 4), np.uint8)
    ref[0, 0, :] = 3          # P1 slice 0: reference 4 voxels, prediction 4, overlap 2 -> 0.5
    pred[0, :, :2] = 3
    pred[1, 0, :2] = 3        # P1 slice 1: reference empty, prediction 2 voxels -> 0
    ref[2, 0, 2:] = 3         # P2 slice 0: reference 2 voxels, prediction empty -> 0
    # P2 slice 1: both empty -> 1 ("one") or skipped ("nan")
    return pred, ref, ["P1", "P1", "P2", "P2"], [10, 11, 40, 41]


@pytest.mark.parametrize("rule, slice_mean", [("one", (0.5 + 0 + 0 + 1) / 4), ("nan", 0.5 / 3)])
def test_toy_example_aggregations_differ(rule, slice_mean):
    scores = seg.evaluate_slices(*_toy(), empty_rule=rule)
    et = scores.summary["ET_dice"]
    assert et["slice"] == pytest.approx(slice_mean)
    assert et["patient"] == pytest.approx((2 * 2 / (4 + 6) + 0.0) / 2)  # P1 volume 0.4, P2 volume 0
    assert et["pooled"] == pytest.approx(2 * 2 / (6 + 6))
    assert len({round(v, 6) for v in et}) == 3
    assert list(scores.summary["n"]) == [4, 2, 1]
    assert scores.summary.loc["pooled", "ET_iou"] == pytest.approx(2 / 10)


def test_per_patient_tables():
    pred, ref, patients, index = _toy()
    volume = seg.per_patient_scores(pred, ref, patients, index, empty_rule="nan", aggregation="patient")
    assert list(volume.columns) == ["patient", *seg.SCORE_COLUMNS[:8], *seg.HD95_COLUMNS, *seg.SCORE_COLUMNS[8:],
                                    "n_slices"]
    assert list(volume["patient"]) == ["P1", "P2"] and list(volume["n_slices"]) == [2, 2]
    assert volume["ET_dice"].tolist() == pytest.approx([0.4, 0.0])
    assert math.isnan(volume.loc[0, "NCR_dice"])  # absent from both: skipped under "nan"
    assert volume.loc[1, "ET_hd95"] == seg.HD95_EMPTY  # P2: the prediction has no ET
    pooled = seg.per_patient_scores(pred, ref, patients, index, empty_rule="nan", aggregation="pooled")
    assert pooled.equals(volume)
    by_slice = seg.per_patient_scores(pred, ref, patients, index, empty_rule="one", aggregation="slice",
                                      with_hd95=False)
    assert by_slice["ET_dice"].tolist() == pytest.approx([0.25, 0.5])  # mean of (0.5, 0) and (0, 1)
    assert by_slice["mean_dice"].tolist() == pytest.approx([(1 + 1 + 0.25) / 3, (1 + 1 + 0.5) / 3])
    assert "ET_hd95" not in by_slice.columns


def test_slice_table_and_patient_order_do_not_depend_on_input_order():
    pred, ref, patients, index = _toy()
    order = [3, 0, 2, 1]
    shuffled = seg.evaluate_slices(pred[order], ref[order], [patients[i] for i in order], [index[i] for i in order],
                                   empty_rule="nan")
    plain = seg.evaluate_slices(pred, ref, patients, index, empty_rule="nan")
    assert shuffled.patients.equals(plain.patients)
    assert shuffled.summary.equals(plain.summary)
    assert list(shuffled.slices["slice_index"]) == [41, 10, 40, 11]


def _surface_points(mask):
    eroded = ndimage.binary_erosion(mask, ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return np.argwhere(mask & ~eroded)


def test_hausdorff95_against_brute_force_distances():
    rng = np.random.default_rng(3)
    for trial in range(3):
        a = ndimage.binary_dilation(rng.random((12, 30, 28)) < 0.01, iterations=2)
        b = ndimage.binary_dilation(rng.random((12, 30, 28)) < 0.01, iterations=2)
        spacing = (2.0, 1.0, 0.5)
        pa, pb = _surface_points(a) * spacing, _surface_points(b) * spacing
        d = cdist(pa, pb)
        expected = max(np.percentile(d.min(1), 95), np.percentile(d.min(0), 95))
        assert seg.hausdorff95(a, b, spacing) == pytest.approx(expected), trial


def test_hausdorff95_by_hand_and_empty_rules():
    a, b = np.zeros((5, 5, 8), bool), np.zeros((5, 5, 8), bool)
    assert seg.hausdorff95(a, b) == 0.0
    a[2, 2, 1] = True
    assert seg.hausdorff95(a, b) == seg.HD95_EMPTY == 373.13
    b[2, 2, 4] = True
    assert seg.hausdorff95(a, b) == 3.0
    assert seg.hausdorff95(a, b, spacing=(1, 1, 2)) == 6.0
    assert seg.hausdorff95(a, a) == 0.0


def test_hd95_of_regions_and_volumes_rebuilt_with_gaps():
    pred = np.zeros((2, 6, 6), np.uint8)
    ref = np.zeros((2, 6, 6), np.uint8)
    pred[0, 3, 3] = 3  # ET at z = 0
    ref[1, 3, 3] = 1   # NCR at z = 2: TC and WT are 2 slices apart, ET exists only in the prediction
    scores = seg.evaluate_slices(pred, ref, ["P", "P"], [5, 7], empty_rule="nan")
    row = scores.patients.iloc[0]
    assert row["TC_hd95"] == 2.0 and row["WT_hd95"] == 2.0  # slice index 6 is missing: background
    assert row["ET_hd95"] == seg.HD95_EMPTY
    assert seg.hd95(pred, ref) == {"ET_hd95": seg.HD95_EMPTY, "TC_hd95": 1.0, "WT_hd95": 1.0}


@pytest.mark.parametrize("pred, message", [
    (np.full((2, 4), 4), "map 4 -> 3 first"),
    (np.full((2, 4), -1), "labels must lie in 0..3"),
    (np.zeros((2, 4), float), "must hold integers"),
    (np.zeros((2, 5), int), "shape mismatch"),
])
def test_bad_label_maps_are_rejected(pred, message):
    with pytest.raises(ValueError, match=message):
        seg.dice_iou(pred, REF, empty_rule="one")


def test_settings_and_slice_metadata_are_checked():
    pred, ref, patients, index = _toy()
    with pytest.raises(ValueError, match="empty_rule must be one of"):
        seg.dice_iou(PRED, REF, empty_rule="zero")
    with pytest.raises(ValueError, match="aggregation must be one of"):
        seg.per_patient_scores(pred, ref, patients, index, empty_rule="nan", aggregation="volume")
    with pytest.raises(ValueError, match="repeated slice indices"):
        seg.evaluate_slices(pred, ref, patients, [1, 1, 2, 3], empty_rule="nan")
    with pytest.raises(ValueError, match="one patient id and slice index per slice"):
        seg.evaluate_slices(pred, ref, patients[:3], index, empty_rule="nan")
