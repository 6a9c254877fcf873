"""Metrics of the Fuse4Seg benchmark: fusion quality, segmentation accuracy and statistics.

``metrics.fusion``: EN, SD, MI, PSNR, SF, Qabf and SSIM under named conventions (``fuse4seg``,
``cddfuse``, ``vifb``). ``metrics.segmentation``: Dice, IoU and HD95 of BraTS labels and regions with
explicit empty-label rules and aggregations. ``metrics.stats``: bootstrap CIs, paired Wilcoxon tests,
mean and std over seeds. ``python -m metrics fusion ...`` scores image folders. docs/metrics.md has the
formulas and choices.
"""
