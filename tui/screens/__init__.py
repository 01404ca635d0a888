"""Modal screens: help, the ingest form, the new-key form and the key shown once."""
