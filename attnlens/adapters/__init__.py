"""attnlens.adapters."""
