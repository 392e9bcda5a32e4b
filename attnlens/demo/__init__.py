"""attnlens.demo."""
