"""Training helpers every model's loop shares (no Ray): batches that keep data-parallel ranks in step,
and model selection on validation."""
