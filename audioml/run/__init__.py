"""The run layer: ``rundir`` (a run directory's files), ``outcome`` (how an error ends a run) and
three rooms: ``fit`` (a training command's sequence and what it builds), ``record`` (MLflow,
sweeps, where jobs stand) and ``use`` (a trained model: evaluate, predict, export, serve,
compare); ``figures`` draws a run's plots."""
