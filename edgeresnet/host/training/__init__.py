"""Fine-tuning: the training data stream, child-process training, pruning, QAT, transfer."""
