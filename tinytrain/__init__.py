"""tinytrain: see, measure and compare how optimizers train the tutorial LeNet, logged to MLflow."""

__version__ = "0.1.0"
