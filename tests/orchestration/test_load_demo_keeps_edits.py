"""`make run` loads the demo every time: loading it again keeps whatever an admin changed.

An edited draft, a version published from it, an agent's new config and weights, another
owner and other access groups all survive; nothing is published over them, and only what is
missing is created.
"""

from __future__ import annotations

import json
import shutil
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from orchestration import definitions
from orchestration.management.commands import load_demo
from orchestration.models import Agent, AgentVersion, DraftStep, Workflow, WorkflowVersion
from orchestration.spec import SpecError

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings: Any) -> None:
    # load_demo hashes three passwords; the production hasher takes most of a second each.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def load() -> str:
    out = StringIO()
    call_command("load_demo", stdout=out)
    return out.getvalue()


def everything() -> dict[str, Any]:
    """Every definition row an admin can edit, as plain values."""
    return {
        "workflows": sorted(
            Workflow.objects.values_list(
                "key", "name", "description", "owner__username", "inputs", "output", "on_failure", "updated_at"
            )
        ),
        "access": sorted(
            (w.key, sorted(w.viewer_groups.values_list("name", flat=True)), sorted(w.operator_groups.values_list("name", flat=True)))
            for w in Workflow.objects.all()
        ),
        "drafts": sorted(
            DraftStep.objects.values_list("workflow__key", "key", "position", "agent__name", "after", "input", "when", "options")
        ),
        "versions": sorted(WorkflowVersion.objects.values_list("pk", "workflow__key", "number", "trial")),
        "agents": sorted(Agent.objects.values_list("name", "kind", "description", "config", "retry", "fallback", "risk")),
        "agent_versions": sorted(AgentVersion.objects.values_list("agent__name", "label", "config", "weight")),
    }


def test_loading_again_keeps_every_edit_an_admin_made_and_publishes_nothing() -> None:
    load()
    workflow = Workflow.objects.get(key="content-pipeline")
    # A version published from an edited draft, then more work in progress on the draft.
    DraftStep.objects.filter(workflow=workflow, key="publish").update(when="input.words > 100")
    published = definitions.publish_draft(workflow, note="ours now")
    DraftStep.objects.filter(workflow=workflow, key="research").update(input={"topic": "{{ input.topic }} (draft)"})
    # Another owner and other groups, as a superuser grants them in admin.
    carol = get_user_model().objects.create_user("carol")
    reviewers = Group.objects.create(name="reviewers")
    workflow.owner = carol
    workflow.save(update_fields=["owner"])
    workflow.viewer_groups.set([reviewers])
    workflow.operator_groups.clear()
    # An agent's own config, and a version of it given traffic.
    Agent.objects.filter(name="researcher").update(description="Ours", config={"delay": 0, "output": {"topic": "x"}})
    editor = Agent.objects.get(name="editor")
    AgentVersion.objects.create(agent=editor, label="strict")
    definitions.set_version_weights(agent=editor, weights={"strict": 100})
    before = everything()

    out = load()

    assert everything() == before
    assert "kept content-pipeline (v2); kept agents researcher" in out
    assert "published" not in out
    assert Workflow.objects.get(key="content-pipeline").latest_version == published


def test_loading_again_does_not_check_a_kept_workflow_against_its_file_again(tmp_path: Path, monkeypatch: Any) -> None:
    """A demo file the current checks refuse (here: one reading an input it does not declare)
    does not stop `make run` when its workflow is already there to keep."""
    load()
    before = everything()
    for path in load_demo.DEMO_DIR.glob("*.yaml"):
        shutil.copy(path, tmp_path / path.name)
    changed = tmp_path / "content-pipeline.yaml"
    text = changed.read_text()
    step_input = '        topic: "{{ input.topic }}"\n        audience: "{{ input.audience }}"\n'
    wrong = text.replace(step_input, step_input.replace("input.audience", "input.audiense"))
    assert wrong != text
    changed.write_text(wrong)
    documents = load_demo.read_demo_files(tmp_path)
    refused = [d for _, d in documents if d["workflow"]["key"] == "content-pipeline"][0]
    with pytest.raises(SpecError, match="`input.audiense` is not an input"):
        definitions.check_document(refused)
    monkeypatch.setattr(load_demo, "DEMO_DIR", tmp_path)

    out = load()

    assert "kept content-pipeline (v1)" in out
    assert everything() == before


def test_it_creates_only_what_is_missing(db: Any) -> None:
    load()
    Workflow.objects.filter(key="meeting-notes").delete()
    kept = everything()

    out = load()

    assert out.count("published") == 1 and "published meeting-notes v1" in out
    after = everything()
    assert [v for v in after["versions"] if v[1] != "meeting-notes"] == kept["versions"]
    assert after["agents"] == kept["agents"]


def test_an_owner_changed_in_the_admin_survives_a_reload(client: Client) -> None:
    load()
    # The demo's own superuser, logged in once load_demo has set its password.
    admin_client = client
    admin_client.force_login(get_user_model().objects.get(username="admin"))
    workflow = Workflow.objects.get(key="support-routing")
    finance = get_user_model().objects.get(username="finance")
    change = reverse("admin:orchestration_workflow_change", args=[workflow.pk])
    form = admin_client.get(change).context["adminform"].form
    data = {name: form[name].value() for name in ("key", "name", "description", "inputs", "output")}
    data["inputs"] = json.dumps(workflow.inputs)
    data.update(owner=finance.pk, viewer_groups=[], operator_groups=[])
    response = admin_client.post(change, {**data, **management_forms(admin_client.get(change))})
    assert response.status_code == 302, response.content.decode()[:2000]
    workflow.refresh_from_db()
    assert workflow.owner == finance
    before = everything()

    load()

    assert everything() == before


def management_forms(response: Any) -> dict[str, Any]:
    """What the change page's inlines post back unchanged: their management forms and rows."""
    data: dict[str, Any] = {}
    for formset in response.context["inline_admin_formsets"]:
        inner = formset.formset
        for name, field in inner.management_form.fields.items():
            data[f"{inner.prefix}-{name}"] = inner.management_form[name].value() or field.initial or 0
        for index, row in enumerate(inner.forms):
            for name in row.fields:
                value = row[name].value()
                if value is None:
                    continue
                if isinstance(value, (dict, list)):
                    value = json.dumps(value)
                data[f"{inner.prefix}-{index}-{name}"] = value
    return data
