"""Classical models: scikit-learn pipelines on handcrafted descriptors (librosa) or deep
features (a frozen backbone, a trained checkpoint), evaluated with the dataset's own grouped
protocol and recorded in MLflow like every audioml run (``audioml-classical``)."""
