"""attnlens.taps."""
