"""The write side: the public publish API, model bindings, the account write path,
broadcasts, revocations, the alert engine and the demo feed."""
