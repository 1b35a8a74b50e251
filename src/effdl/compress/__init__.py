"""Compression techniques (importing registers them)."""
