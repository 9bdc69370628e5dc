"""Model bindings: host models whose saves push account frames.

A binding says which marker a model feeds (``b``, ``o`` or ``a``), how to
find an instance's login, and which fields form the frame::

    BROKER_WS = {"BINDINGS": [
        {"model": "broker.Balance", "marker": "b", "login": "account.login",
         "fields": ["currency", "balance", "equity"]},
    ]}

or in code, ``broker_ws.bind(Balance, marker="b", login="account.login",
fields=[...])``. ``login`` and each field are attribute paths (``a.b.c``) or
callables taking the instance. A row may belong to several logins (a trade
between a buyer and a seller, an account a manager watches): ``login`` is then
a list of accessors (``["buyer.login", "seller.login"]``), or an accessor that
yields a list; the frame goes to each login, numbered with that login's seq.

The ``post_save`` handler snapshots the instance and records the frame in
the account-event outbox inside the saving transaction
(:mod:`broker_ws.publish.accounts`); it is published when that transaction commits.
A rolled-back save sends nothing, and a failure of the bus after commit is
logged, never raised into the code that saved. Wrap saves in
``transaction.atomic()`` (the admin does) to make the frame atomic with the
save; under autocommit it is recorded right after the save's own commit.

A row saved several times in one transaction (a host's ``post_save`` handler
that saves the instance again) gives one frame per login, at the seq of its
first save, carrying the state of its last save: the state the transaction
commits (:mod:`broker_ws.publish.accounts`).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import models, router
from django.db.models.expressions import BaseExpression, Combinable
from django.db.models.signals import post_save

from broker_ws.exceptions import ConfigurationError
from broker_ws.publish.accounts import Pending, emit
from broker_ws.wire import frames

logger = logging.getLogger(__name__)

Accessor = str | Callable[[Any], Any]
#: ``login`` of a binding: one accessor, or several (each may yield several logins).
LoginAccessor = Accessor | Sequence[Accessor]


def _getter(accessor: Accessor) -> Callable[[Any], Any]:
    if callable(accessor):
        return accessor
    return operator.attrgetter(accessor)


def login_accessors(login: LoginAccessor) -> tuple[Accessor, ...]:
    """The accessors of a binding's ``login``: one, or each of a list."""
    if isinstance(login, str) or callable(login):
        return (login,)
    return tuple(login)


def _expand(value: Any) -> Iterable[Any]:
    """One login value, or the values of a collection (a list, a set, a queryset)."""
    if isinstance(value, str | bytes | int) or not isinstance(value, Iterable):
        return (value,)
    return value


@dataclass(frozen=True)
class Binding:
    """How one model feeds one account marker.

    ``login`` holds one accessor or several (see :func:`login_accessors`).
    ``current`` filters the rows a REST snapshot includes (open trades,
    active alerts); None includes every row of the login. A snapshot finds a
    login's rows through the accessors that are attribute paths.
    """

    model: type[models.Model]
    marker: str
    login: LoginAccessor
    fields: tuple[Accessor, ...]
    current: Mapping[str, Any] | None = None

    @property
    def login_lookups(self) -> list[str]:
        """The ORM lookups (``account__login``) of the login accessors that are paths."""
        return [a.replace(".", "__") for a in login_accessors(self.login) if isinstance(a, str)]

    def logins_of(self, instance: models.Model) -> list[str]:
        """The logins ``instance`` belongs to, each once, in accessor order.

        None and ``""`` are no login: a row whose only login is unset sends nothing.
        """
        found: dict[str, None] = {}
        for accessor in login_accessors(self.login):
            for value in _expand(_getter(accessor)(instance)):
                if value is not None and value != "":
                    found[str(value)] = None
        return list(found)

    def frame_parts(self, instance: models.Model) -> list[tuple[str, tuple[str, str]]]:
        """``(login, frame parts)`` for each login of ``instance`` (none if it has none).

        The fields are read once; each login gets its own encoded frame, since
        the login is part of it.
        """
        _settle_expressions(instance)
        logins = self.logins_of(instance)
        if not logins:
            return []
        values = [_field_value(instance, accessor) for accessor in self.fields]
        return [(login, frames.account_parts(self.marker, login, values)) for login in logins]


def _settle_expressions(instance: models.Model) -> None:
    """Read back fields saved as expressions (``F("balance") + 1``).

    After such a save the instance still holds the expression, not the
    value; the frame must carry the value the row now has (we are inside the
    saving transaction, so that is the value being committed).
    """
    pending = [
        field.attname
        for field in instance._meta.concrete_fields
        if isinstance(getattr(instance, field.attname, None), BaseExpression | Combinable)
    ]
    if pending:
        instance.refresh_from_db(fields=pending)


def _field_value(instance: models.Model, accessor: Accessor) -> Any:
    value = _getter(accessor)(instance)
    if isinstance(value, models.Model):
        return value.pk
    if isinstance(accessor, str) and "." not in accessor and value is not None:
        # A string assigned to a DecimalField (a form, an API payload) is
        # saved as a number and must go out as one.
        try:
            field = instance._meta.get_field(accessor)
        except FieldDoesNotExist:
            return value
        if isinstance(field, models.DecimalField):
            # Digits as the database keeps them: 100 (an int) and 100.00 (read
            # back) must go out alike.
            number = field.to_python(value)
            if number is not None and number.is_finite() and field.decimal_places is not None:
                return number.quantize(Decimal(1).scaleb(-field.decimal_places))
            return number
        if isinstance(field, models.Field) and not field.is_relation:
            return field.to_python(value)
    return value


_registry: dict[type[models.Model], Binding] = {}


def bind(
    model: type[models.Model] | str,
    *,
    marker: str,
    login: LoginAccessor,
    fields: Sequence[Accessor],
    current: Mapping[str, Any] | None = None,
) -> Binding:
    """Push ``[marker, login, seq, *fields]`` on every committed save of ``model``.

    Args:
        model: the model class or ``"app_label.ModelName"``.
        marker: ``"b"`` (balance), ``"o"`` (trade) or ``"a"`` (price alert).
        login: attribute path or callable giving an instance's login (or a
            collection of logins), or a list of such accessors for a row that
            belongs to several logins.
        fields: attribute paths or callables, in frame order.
        current: filter of the rows a REST snapshot returns (``{"status": "open"}``);
            None returns every row of the login.
    """
    if isinstance(model, str):
        model = apps.get_model(model)
    if marker not in frames.ACCOUNT_MARKERS:
        raise ConfigurationError(f"marker must be one of {sorted(frames.ACCOUNT_MARKERS)}")
    if not login_accessors(login):
        raise ConfigurationError("login needs at least one accessor")
    binding = Binding(model, marker, login, tuple(fields), current)
    _registry[model._meta.concrete_model or model] = binding
    # One receiver for every model: saves through a proxy of a bound model
    # must push too, and the registry lookup is one dict access per save.
    post_save.connect(_on_save, dispatch_uid="broker_ws:bindings")
    return binding


def unbind(model: type[models.Model]) -> None:
    """Stop pushing saves of ``model``."""
    _registry.pop(model._meta.concrete_model or model, None)


def bindings() -> dict[type[models.Model], Binding]:
    """The active bindings, by model."""
    return dict(_registry)


def bind_from_settings(declared: Iterable[dict[str, Any]]) -> None:
    """Install the bindings declared in ``BROKER_WS['BINDINGS']``.

    Entries that cannot be installed are skipped here and reported by the
    system check ``broker_ws.E007``, so a typo never stops the server import.
    """
    for entry in declared if isinstance(declared, list | tuple) else ():
        try:
            bind(
                entry["model"],
                marker=entry["marker"],
                login=entry["login"],
                fields=entry["fields"],
                current=entry.get("current"),
            )
        except (KeyError, TypeError, ValueError, LookupError, ConfigurationError):
            continue


def _on_save(sender: type[models.Model], instance: models.Model, **kwargs: Any) -> None:
    if kwargs.get("raw") or (sender._meta.concrete_model or sender) not in _registry:
        return  # not bound, or loaddata (fixtures are not events)
    _schedule([instance], kwargs.get("using") or router.db_for_write(sender))


def push_saved(instances: Iterable[models.Model], using: str | None = None) -> int:
    """Push frames for instances saved without signals.

    ``bulk_create``, ``bulk_update`` and ``QuerySet.update()`` send no
    ``post_save``; pass the affected instances (re-read them after
    ``update()``), in the same transaction, and their frames go out when it
    commits, like a save's. Returns how many frames were recorded.
    """
    return _schedule(instances, using)


def _schedule(instances: Iterable[models.Model], using: str | None) -> int:
    pending: list[Pending] = []
    for instance in instances:
        model = type(instance)._meta.concrete_model or type(instance)
        binding = _registry.get(model)
        if binding is None:
            continue
        # The row's identity lets a later save of it in the same transaction
        # replace this frame (see broker_ws.publish.accounts).
        row = (model._meta.label, instance.pk) if instance.pk is not None else None
        pending.extend(
            Pending(login, parts, None if row is None else (*row, login))
            for login, parts in binding.frame_parts(instance)
        )
    if not pending:
        return 0
    return len({event.id for event in emit(pending, using)})
