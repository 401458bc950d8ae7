"""What every program shares: precision, optimizer groups and schedule, random state, run metrics, the DeepSpeed engine and its checkpoints."""
