"""The session side: the consumer, its outgoing queue, the per-process hub,
symbols, rate limits, the drain on SIGTERM and the garbage-collection policy."""
