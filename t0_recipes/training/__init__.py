"""Pre-training, few-shot adaptation, the optimiser and the resumable run state."""
