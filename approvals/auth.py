"""API authentication: personal bearer tokens, and the browser's session with CSRF.

A token is shown once when it is created; the database keeps its SHA-256 hash (looked up by
equality, so no constant-time comparison is needed) and its first characters to tell tokens
apart in the admin.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.http import HttpRequest
from django.utils import timezone
from ninja.security import APIKeyCookie, HttpBearer

from approvals.models import ApiToken

TOKEN_PREFIX = "baton_"
PREFIX_LENGTH = 12
# Ours are 49 characters; anything much longer is not one of ours, and is not hashed.
MAX_TOKEN_CHARS = 200


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def set_new_key(row: ApiToken) -> str:
    """Give an unsaved token row a fresh key; returns the key, which is not stored anywhere."""
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    row.prefix = token[:PREFIX_LENGTH]
    row.key_hash = hash_token(token)
    return token


def create_api_token(*, user: Any, name: str = "", days: int | None = None) -> tuple[ApiToken, str]:
    """A new token for this user: the row, and the token itself (show it once). With `days`,
    it expires that many days from now."""
    expires_at = timezone.now() + timedelta(days=days) if days is not None else None
    row = ApiToken(user=user, name=name, expires_at=expires_at)
    token = set_new_key(row)
    row.save()
    return row, token


def user_for_token(token: str) -> Any:
    """The active user this token belongs to, or None (answered 401); notes when it was last
    used. A deleted (revoked) token has no row; an expired one is refused like it."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    now = timezone.now()
    row = ApiToken.objects.select_related("user").filter(key_hash=hash_token(token.strip())).first()
    if row is None or not row.user.is_active:
        return None
    if row.expires_at is not None and row.expires_at <= now:
        return None
    ApiToken.objects.filter(pk=row.pk).update(last_used_at=now)
    return row.user


class BearerToken(HttpBearer):
    """`Authorization: Bearer <token>`."""

    def authenticate(self, request: HttpRequest, token: str) -> Any:
        return user_for_token(token)


class SessionWithCsrf(APIKeyCookie):
    """The logged-in browser session; unsafe methods need the CSRF token, as in every form.

    Without a session cookie there is nothing to check, so a client with a wrong token gets
    401, not a CSRF error.
    """

    param_name = "sessionid"  # for the OpenAPI description; requests read the setting

    def _get_key(self, request: HttpRequest) -> str | None:
        cookie = settings.SESSION_COOKIE_NAME
        if cookie not in request.COOKIES:
            return None
        super()._get_key(request)  # the CSRF check: raises HttpError(403) when it fails
        return request.COOKIES[cookie]

    def authenticate(self, request: HttpRequest, key: str | None) -> Any:
        user = getattr(request, "user", None)
        if key and user is not None and user.is_authenticated and user.is_active:
            return user
        return None
