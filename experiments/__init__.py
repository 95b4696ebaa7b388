"""A/B assignment, analysis, reports and run comparison."""
