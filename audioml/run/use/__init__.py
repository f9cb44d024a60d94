"""Using a trained model: the checkpoint as the model, evaluation and prediction, export, MLflow serving, paired comparison of runs."""
