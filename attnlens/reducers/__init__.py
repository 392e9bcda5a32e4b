"""attnlens.reducers."""
