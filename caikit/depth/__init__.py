"""`caikit depth`: how deep did the alignment go between two checkpoints of one architecture?

Modules by concern: activations.py (loading both models, residual-stream activations, generation),
spectrum.py (the shift's effective dimensionality), direction.py (the difference-in-means refusal direction),
ablation.py (forward hooks that remove or add directions at inference), token_kl.py (per-position KL),
weights.py (the spectrum of each weight change), command.py (the command and its depth.json).
The math modules are pure functions of tensors; the command glues them to models and prompts.
"""
