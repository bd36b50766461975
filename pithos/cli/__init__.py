"""Command-line entry points: the only place that reads configuration and the environment."""
