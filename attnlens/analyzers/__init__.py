"""attnlens.analyzers."""
