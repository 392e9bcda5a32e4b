"""attnlens.models."""
