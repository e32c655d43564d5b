"""Attack plugins: craft adversarial examples against a wrapped classifier."""
