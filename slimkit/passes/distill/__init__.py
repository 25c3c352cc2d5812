"""Knowledge distillation: logit KD, feature KD with adapters, mutual learning, and student builders."""
