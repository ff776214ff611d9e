"""Integrations of cachediff with other software (each in a folder of its own)."""
