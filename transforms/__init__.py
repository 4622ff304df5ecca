"""pipeline-sync: transforms."""
