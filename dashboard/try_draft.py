"""Try this draft: start a run of a workflow's draft, with a sample input, without
publishing it (orchestration.definitions.try_draft freezes it as a trial version).

Only those who may change the workflow (its owner, superusers) may: a trial runs steps the
published workflow does not have. The form is `_try_draft.html`, which the workflow page
includes and this view returns with what stopped the trial (422).
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST
from django_htmx.http import HttpResponseClientRedirect

from dashboard import inputs, workflow_page
from dashboard.web import HtmxHttpRequest, wants_partial
from orchestration import access, definitions
from orchestration.spec import SpecError


@require_POST
@login_required
def try_draft(request: HtmxHttpRequest, key: str) -> HttpResponse:
    workflow = access.get_workflow_for_user(request.user, key)
    if not access.can_change(request.user, workflow):
        raise PermissionDenied("Only the workflow's owner (or an admin) may try its draft.")
    schema = workflow_page.draft_schema(workflow)
    errors: dict[str, str] = {}
    problems: list[str] = []
    try:
        # The draft's inputs as publishing reads them: the form's text is parsed by those.
        schema = {name: dict(item) for name, item in definitions.check_draft(workflow)["inputs"].items()}
    except SpecError as exc:
        problems = exc.problems
    if not problems:
        values, errors = inputs.parse(schema, request.POST)
        if not errors:
            try:
                run = definitions.try_draft(workflow=workflow, input=values, actor=request.user)
            except SpecError as exc:  # the draft was changed meanwhile
                problems = exc.problems
            except ValueError as exc:
                errors = inputs.field_errors(str(exc), set(schema))
            else:
                url = reverse("dashboard:run", args=[run.pk])
                return HttpResponseClientRedirect(url) if request.htmx else redirect(url)
    trial = workflow_page.try_draft_form(workflow, schema, request.POST, errors, problems)
    if wants_partial(request):
        return render(request, "dashboard/_try_draft.html", {"workflow": workflow, "trial": trial}, status=422)
    # Without JavaScript the whole page comes back, the form showing what stopped the trial.
    context = workflow_page.workflow_page(workflow, request.user, request.GET, trial=trial)
    return render(request, "dashboard/workflow.html", context, status=422)
