"""Defence plugins: input preprocessing that tries to undo adversarial perturbations."""
