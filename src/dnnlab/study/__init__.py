"""The CIFAR-10 architecture study: train, probe and report a list of variants."""
