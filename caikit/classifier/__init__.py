"""Guards trained from a constitution's categories (Constitutional Classifiers, Sharma et al. 2025,
arXiv:2501.18837): labelled rows (augment.py, split.py), the model (model.py), training (train.py),
evaluation and scoring (evaluate.py)."""
