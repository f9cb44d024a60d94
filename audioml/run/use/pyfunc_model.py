"""The code of an audioml MLflow model ("models from code"): MLflow runs this file when it
loads the model, so loading imports audioml instead of unpickling an object
(``audioml.run.use.serving``)."""

import mlflow

from audioml.run.use.serving import AudiomlModel

mlflow.models.set_model(AudiomlModel())
