"""Per-patch Gaussian-splat training that cannot fail silently."""
