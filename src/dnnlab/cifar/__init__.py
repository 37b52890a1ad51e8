"""CIFAR-10 architecture study: data, the model family, the training recipe."""
