"""A run's figures and tables: the callbacks that record them during training and the worker process that draws them."""
