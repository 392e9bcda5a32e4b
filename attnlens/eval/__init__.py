"""attnlens.eval."""
