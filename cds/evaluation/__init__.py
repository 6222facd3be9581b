"""Evaluation: metrics with confidence intervals, calibration, published anchors."""
