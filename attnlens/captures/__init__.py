"""attnlens.captures."""
