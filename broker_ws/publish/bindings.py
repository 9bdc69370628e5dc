"""Model bindings: host models whose saves push account frames.

A binding says which marker a model feeds (``b``, ``o`` or ``a``), how to
find an instance's login, and which fields form the frame::

    BROKER_WS = {"BINDINGS": [
        {"model": "broker.Balance", "marker": "b", "login": "account.login",
         "fields": ["currency", "balance", "equity"]},
    ]}

or in code, ``broker_ws.bind(Balance, marker="b", login="account.login",
fields=[...])``. ``login`` and each field are attribute paths (``a.b.c``) or
callables taking the instance.

The ``post_save`` handler snapshots the instance and records the frame in
the account-event outbox inside the saving transaction
(:mod:`broker_ws.publish.accounts`); it is published when that transaction commits.
A rolled-back save sends nothing, and a failure of the bus after commit is
logged, never raised into the code that saved. Wrap saves in
``transaction.atomic()`` (the admin does) to make the frame atomic with the
save; under autocommit it is recorded right after the save's own commit.
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
from broker_ws.publish.accounts import emit
from broker_ws.wire import frames

logger = logging.getLogger(__name__)

Accessor = str | Callable[[Any], Any]


def _getter(accessor: Accessor) -> Callable[[Any], Any]:
    if callable(accessor):
        return accessor
    return operator.attrgetter(accessor)


@dataclass(frozen=True)
class Binding:
    """How one model feeds one account marker.

    ``current`` filters the rows a REST snapshot includes (open trades,
    active alerts); None includes every row of the login. A snapshot finds a
    login's rows through ``login`` when it is an attribute path.
    """

    model: type[models.Model]
    marker: str
    login: Accessor
    fields: tuple[Accessor, ...]
    current: Mapping[str, Any] | None = None

    @property
    def login_lookup(self) -> str | None:
        """The ORM lookup of the login (``account__login``), if ``login`` is a path."""
        return self.login.replace(".", "__") if isinstance(self.login, str) else None

    def frame_parts(self, instance: models.Model) -> tuple[str, tuple[str, str]] | None:
        """``(login, frame parts)`` for ``instance``, or None if it has no login."""
        _settle_expressions(instance)
        login = _getter(self.login)(instance)
        if login is None or login == "":
            return None
        login = str(login)
        values = [_field_value(instance, accessor) for accessor in self.fields]
        return login, frames.account_parts(self.marker, login, values)


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
    login: Accessor,
    fields: Sequence[Accessor],
    current: Mapping[str, Any] | None = None,
) -> Binding:
    """Push ``[marker, login, seq, *fields]`` on every committed save of ``model``.

    Args:
        model: the model class or ``"app_label.ModelName"``.
        marker: ``"b"`` (balance), ``"o"`` (trade) or ``"a"`` (price alert).
        login: attribute path or callable giving an instance's login.
        fields: attribute paths or callables, in frame order.
        current: filter of the rows a REST snapshot returns (``{"status": "open"}``);
            None returns every row of the login.
    """
    if isinstance(model, str):
        model = apps.get_model(model)
    if marker not in frames.ACCOUNT_MARKERS:
        raise ConfigurationError(f"marker must be one of {sorted(frames.ACCOUNT_MARKERS)}")
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
    by_login: dict[str, list[tuple[str, str]]] = {}
    for instance in instances:
        binding = _registry.get(type(instance)._meta.concrete_model or type(instance))
        if binding is None:
            continue
        parts_of = binding.frame_parts(instance)
        if parts_of is not None:
            login, parts = parts_of
            by_login.setdefault(login, []).append(parts)
    if not by_login:
        return 0
    return len(emit(by_login, using))
