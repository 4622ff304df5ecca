"""pipeline-sync: flows."""
