"""Layer-wise separability probing of trained networks."""
