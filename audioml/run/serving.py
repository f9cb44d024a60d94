"""The import path of MLflow models logged before the run layer moved into rooms: their model
code (a copy of ``audioml/run/use/pyfunc_model.py`` taken when they were logged) imports
``audioml.run.serving.AudiomlModel``; kept so that those models still load."""

from audioml.run.use.serving import AudiomlModel

__all__ = ["AudiomlModel"]
