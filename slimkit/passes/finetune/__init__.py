"""Fine-tuning: ``loop.train_model`` (shared by pruning and distillation) and the ``finetune`` pass."""
