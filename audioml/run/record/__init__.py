"""Recording a run: MLflow (stores, runs, the UI's view), sweeps and where their jobs stand, the background completion of a run's record."""
