"""Estimator plugins: train models and wrap them for the adversarial-robustness-toolbox."""
