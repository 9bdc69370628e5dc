"""The transactional outbox: the store, cursors and tails that follow it, the
poll thread, resume and REST snapshots."""
