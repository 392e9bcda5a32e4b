"""attnlens.metrics."""
