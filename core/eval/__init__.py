"""Evaluation against ground truth: pixel metrics on unknown cells, the copy baselines, the
epipolar multi-view consistency figure, and the table of ``launch.py eval``.

What it owns: measuring. What it does not: making grids (the engine samples, the world renders);
this package only compares frames it is given, so every figure can be recomputed from grid.npz
files without a model.
"""
