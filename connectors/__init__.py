"""pipeline-sync: connectors."""
