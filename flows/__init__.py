"""What users run: the `geor` command line and the flows that compose tasks (pipeline, sweep, retrain)."""
