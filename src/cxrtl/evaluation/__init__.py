"""Evaluation: metrics with intervals, calibration, Grad-CAM checks and the evaluate stage."""
