"""verl-avsd: Adaptive-View Self-Distillation for verl."""
