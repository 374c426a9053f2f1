"""Detector calibration: masters, bad-pixel mask, bundle file, fast application, noise model."""
