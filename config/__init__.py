"""pipeline-sync: config."""
