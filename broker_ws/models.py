"""The account-event outbox: the source of truth for account frames.

Every account frame (``b``, ``o``, ``a``, per-login ``n``) is written here in
the same database transaction as the save that caused it, with the login's
next sequence number. The bus (in-process or Redis pub/sub) only makes
delivery fast; what it misses (a save in another process without Redis, a
publish while Redis was down) each server process reads back from this
table. A rolled-back save leaves no row, and a committed one is never lost.
"""

from __future__ import annotations

import secrets

from django.db import models


def new_epoch() -> str:
    """A fresh epoch: 16 random hex characters, unique in practice."""
    return secrets.token_hex(8)


class LoginSequence(models.Model):
    """The last sequence number given to a login, and the epoch of that numbering.

    Incremented in the saving transaction: the row lock it takes orders
    concurrent transactions of one login, so seq order is commit order.

    ``epoch`` names the numbering: seqs of one epoch are comparable, seqs of
    two epochs are not. A row created again (the login's row was deleted) gets
    a new one; after a database restore, ``manage.py ws_new_epoch`` gives every
    login a new one, so that clients holding seqs of the lost timeline resync.
    """

    login = models.CharField(max_length=191, primary_key=True)
    seq = models.BigIntegerField(default=0)
    epoch = models.CharField(max_length=32, default=new_epoch)

    class Meta:
        verbose_name = "login sequence"

    def __str__(self) -> str:
        return f"{self.login}: {self.seq}"


class AccountEvent(models.Model):
    """One account frame, encoded as sent, kept for delivery, gap filling and resume.

    The newest ``BROKER_WS['HISTORY_SIZE']`` rows of each login are kept;
    older ones are pruned by the transaction that writes a new one.
    """

    id = models.BigAutoField(primary_key=True)
    login = models.CharField(max_length=191)
    seq = models.BigIntegerField()
    frame = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "account event"
        constraints = [
            models.UniqueConstraint(fields=["login", "seq"], name="broker_ws_event_login_seq"),
        ]

    def __str__(self) -> str:
        return f"{self.login}#{self.seq}"


class Revocation(models.Model):
    """A user's access revoked: tokens issued up to ``revoked_at`` are refused.

    Written in the revoking transaction (like account frames); every server
    process reads new rows, on the bus or from this table, and closes that
    user's sessions with 4004. Once a new row commits, the user's earlier
    rows it supersedes are deleted (:func:`broker_ws.publish.revocation.revoke_user`).
    """

    id = models.BigAutoField(primary_key=True)
    user_id = models.CharField(max_length=191, db_index=True)
    revoked_at = models.DateTimeField()

    class Meta:
        verbose_name = "revocation"

    def __str__(self) -> str:
        return f"user {self.user_id} at {self.revoked_at:%Y-%m-%d %H:%M:%S}"


class Broadcast(models.Model):
    """A notification to every session, kept briefly so that every server process
    delivers it, even one the bus does not reach (no Redis, or Redis down)."""

    id = models.BigAutoField(primary_key=True)
    frame = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "broadcast"

    def __str__(self) -> str:
        return f"broadcast {self.id}"
