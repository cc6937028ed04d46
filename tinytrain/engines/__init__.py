"""Training: `train(spec)` (sequential.py) and the batched engine that trains many cells at once, bit for bit."""
