"""attnlens.plot."""
