"""What every page view shares: the htmx request type and "the whole page or only its partial".

It lives in dashboard because dashboard is the lowest of the two apps with pages: approvals'
views already build on dashboard (its graph and its start-form inputs), and orchestration, below
both, holds no view code. Putting it in approvals would make dashboard import upwards.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.cache import patch_vary_headers
from django_htmx.middleware import HtmxDetails

if TYPE_CHECKING:
    from django.contrib.auth.models import User


class HtmxHttpRequest(HttpRequest):
    """A request after django-htmx's middleware, as its docs suggest for type checking.

    Every view that takes one is behind login_required, so the user is a signed-in one.
    """

    htmx: HtmxDetails
    user: User


def wants_partial(request: HtmxHttpRequest) -> bool:
    """Whether htmx asks for a part of the page (a poll, a filter, an action).

    A boosted link or form (hx-boost) swaps the whole body, so it gets the whole page.
    """
    return bool(request.htmx) and not request.htmx.boosted


def partial_or_page(request: HtmxHttpRequest, page: str, partial: str, context: dict[str, Any]) -> HttpResponse:
    """The whole page, or only its live partial when htmx asks for one."""
    response = render(request, partial if wants_partial(request) else page, context)
    # The same URL answers with two bodies; caches must not hand one to the other.
    patch_vary_headers(response, ("HX-Request", "HX-Boosted"))
    return response
