"""Training: the loop, losses, resume state, run directories and DDP wiring."""
