"""Maps a Django user to the broker logins they may stream."""

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser

from .models import Account


def logins_for_user(user: AbstractBaseUser | AnonymousUser | None) -> list[str]:
    """Return the user's account logins, sorted, as strings.

    This is the demo's BROKER_WS["LOGIN_RESOLVER"]; broker_ws calls it from a worker thread,
    so plain synchronous ORM access is fine here.
    """
    # getattr keeps this working for any user-like object broker_ws hands over.
    user_pk = getattr(user, "pk", None)
    if user_pk is None or not getattr(user, "is_authenticated", False):
        return []
    logins = Account.objects.filter(user_id=user_pk).order_by("login")
    return [str(login) for login in logins.values_list("login", flat=True)]
