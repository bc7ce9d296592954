"""Model sources: one loader per kind of model file, detected from the file's content (registry)."""
