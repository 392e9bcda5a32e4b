"""attnlens.train."""
