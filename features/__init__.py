"""Point-in-time customer context from purchase and interaction history; offline and online stores."""
