"""The trainer: state, step, mesh, optimiser, checkpointing, metric writing and the loop."""
