"""An example tinytrain plugin: an optimizer (optim.Signum) and a problem (problems.Blobs)."""
