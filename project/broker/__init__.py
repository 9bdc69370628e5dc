"""Stand-in broker backend: the models that broker_ws streams to clients."""
