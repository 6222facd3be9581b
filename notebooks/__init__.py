"""The notebooks shipped with cds (package data; the repository's top-level notebooks/ folder)."""
