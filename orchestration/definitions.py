"""Writes to definitions: importing files, editing drafts, publishing immutable versions.

Every function validates first and writes in one transaction, so a bad file or draft changes
nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, cast

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction
from django.db.models import Q

from orchestration import transitions
from orchestration.models import (
    Agent,
    AgentVersion,
    AgentVersionEvent,
    DraftStep,
    Run,
    StepKind,
    Workflow,
    WorkflowVersion,
)
from orchestration.spec import (
    AgentSpec,
    Catalog,
    RiskLevel,
    SpecError,
    StepSpec,
    WorkflowSpec,
    agent_templates,
    children_of,
    chosen_at_run_time,
    dump_document,
    known_output_keys,
    normalise_workflow,
    step_agents,
    validate_document,
)


def current_catalog() -> Catalog:
    workflows: dict[str, set[str]] = {}
    latest: dict[int, WorkflowVersion] = {}
    version: WorkflowVersion | None
    for version in WorkflowVersion.objects.filter(trial=False).order_by("workflow_id", "number"):
        latest[version.workflow_id] = version
    for workflow in Workflow.objects.all():
        version = latest.get(workflow.pk)
        workflows[workflow.key] = children_of(version.spec) if version else set()
    agents = list(Agent.objects.prefetch_related("versions"))
    outputs = {}
    templates = {}
    for agent in agents:
        shape = _agent_shape(agent)
        keys = known_output_keys(shape)
        if keys is not None:
            outputs[agent.name] = keys
        templates[agent.name] = agent_templates(shape)
    return Catalog(
        agents={a.name for a in agents},
        workflows=workflows,
        users=set(get_user_model().objects.values_list("username", flat=True)),
        groups=set(Group.objects.values_list("name", flat=True)),
        outputs=outputs,
        templates=templates,
    )


def _agent_shape(agent: Agent) -> dict[str, Any]:
    # What known_output_keys reads, from a row whose versions are prefetched.
    return {
        "kind": agent.kind,
        "fallback": agent.fallback,
        "config": agent.config,
        "versions": [{"label": v.label, "config": v.config} for v in agent.versions.all()],
    }


def check_document(document: dict[str, Any]) -> tuple[list[AgentSpec], WorkflowSpec | None]:
    """Validate a parsed file against the database without writing anything."""
    return validate_document(document, current_catalog())


def import_document(
    document: dict[str, Any], *, user: Any = None, note: str = ""
) -> tuple[list[Agent], WorkflowVersion | None]:
    agents, spec = check_document(document)
    with transaction.atomic():
        saved_agents = [_save_agent(a) for a in agents]
        version = None
        if spec is not None:
            workflow = _save_draft(spec)
            version = _publish(workflow, spec, user=user, note=note or "imported")
    return saved_agents, version


def _save_agent(agent: AgentSpec) -> Agent:
    row, _ = Agent.objects.update_or_create(
        name=agent["name"],
        defaults={
            "kind": agent["kind"],
            "description": agent["description"],
            "config": agent["config"],
            "timeout_seconds": agent["timeout"],
            "retry": agent["retry"] or {},
            "fallback": agent["fallback"],
            "circuit": agent["circuit"],
            "max_concurrency": agent["max_concurrency"],
            "risk": agent["risk"],
        },
    )
    _save_versions(row, agent)
    return row


def _save_versions(row: Agent, agent: AgentSpec) -> None:
    """The file says which versions the agent has: created or updated by label, their weights
    set through set_version_weights (so the change is in the weights' history). A version the
    file leaves out is deleted if no run used it; one that was used is kept, with weight 0 (its
    attempts point at it, and its figures remain comparable)."""
    existing = {v.label: v for v in AgentVersion.objects.filter(agent=row)}
    wanted = {v["label"]: v for v in agent["versions"]}
    for label, version in wanted.items():
        found = existing.get(label)
        if found is None:
            # Weight 0 until set below, so that the weight's history says who gave it traffic.
            AgentVersion.objects.create(agent=row, label=label, config=version["config"], note=version["note"], weight=0)
        elif (found.config, found.note) != (version["config"], version["note"]):
            AgentVersion.objects.filter(pk=found.pk).update(config=version["config"], note=version["note"])
    left_out = [v for label, v in existing.items() if label not in wanted]
    used = set(
        AgentVersion.objects.filter(pk__in=[v.pk for v in left_out])
        .filter(Q(attempts__isnull=False) | Q(choices__isnull=False))
        .values_list("pk", flat=True)
        .distinct()
    )
    AgentVersion.objects.filter(pk__in=[v.pk for v in left_out if v.pk not in used]).delete()
    weights = {label: v["weight"] for label, v in wanted.items()}
    weights.update({v.label: 0 for v in left_out if v.pk in used})
    if weights:
        set_version_weights(agent=row, weights=weights, reason="imported from a workflow file")


def _save_draft(spec: WorkflowSpec) -> Workflow:
    owner = None
    if spec.get("owner"):
        owner = get_user_model().objects.get(username=spec["owner"])
    workflow, _ = Workflow.objects.update_or_create(
        key=spec["key"],
        defaults={
            "name": spec["name"],
            "description": spec["description"],
            "owner": owner,
            "inputs": spec["inputs"],
            "output": "" if spec["output"] is None else _output_text(spec["output"]),
            "on_cancel": spec.get("on_cancel", "nothing"),
            "on_failure": spec.get("on_failure", "fail"),
            "allow_self_approval": spec.get("allow_self_approval", False),
            "triggers": spec.get("triggers") or [],
        },
    )
    # A file without `access` leaves only the owner (and superusers) with access, as it says.
    access = spec.get("access") or {}
    workflow.viewer_groups.set(Group.objects.filter(name__in=access.get("viewers", [])))
    workflow.operator_groups.set(Group.objects.filter(name__in=access.get("operators", [])))
    workflow.draft_steps.all().delete()
    agents = {a.name: a for a in Agent.objects.filter(name__in=[s.get("agent") for s in spec["steps"]])}
    children = {
        w.key: w
        for w in Workflow.objects.filter(key__in=[s.get("workflow") for s in spec["steps"]])
    }
    DraftStep.objects.bulk_create(
        [_draft_step(workflow, position, step, agents, children) for position, step in enumerate(spec["steps"])]
    )
    return workflow


def _output_text(output: Any) -> str:
    # The draft keeps the output template as text; a structured template is stored as YAML.
    if isinstance(output, str):
        return output
    import yaml

    return yaml.safe_dump(output, sort_keys=False).strip()


def _draft_step(
    workflow: Workflow,
    position: int,
    step: StepSpec,
    agents: dict[str, Agent],
    children: dict[str, Workflow],
) -> DraftStep:
    options: dict[str, Any] = {}
    for name in (
        "name", "description", "timeout", "retry", "fallback", "compensate", "gate", "on_failure",
        "agents", "workflows", "item_key",
    ):
        if step.get(name) is not None:
            options[name] = step[name]
    if step["kind"] in (StepKind.APPROVAL, StepKind.MANUAL, StepKind.WAIT, StepKind.ROUTE, StepKind.END):
        options[step["kind"]] = step[step["kind"]]
    for name in ("agent", "workflow"):
        # An expression (chosen at run time) has no row to point at: the draft keeps its text.
        if chosen_at_run_time(step.get(name)):
            options[name] = step.get(name)
    return DraftStep(
        workflow=workflow,
        position=position,
        key=step["key"],
        kind=step["kind"],
        agent=agents.get(step.get("agent", "")),
        sub_workflow=workflow if step.get("workflow") == workflow.key else children.get(step.get("workflow", "")),
        after=", ".join(step["after"]),
        input=step.get("input"),
        when=step.get("when") or "",
        for_each=step.get("for_each") or "",
        concurrency=step.get("concurrency"),
        loop=step.get("loop"),
        options=options,
    )


def draft_to_raw(workflow: Workflow) -> dict[str, Any]:
    """The draft in the file's shape, ready for validation."""
    import yaml

    steps: list[dict[str, Any]] = []
    for row in workflow.draft_steps.select_related("agent", "sub_workflow").order_by("position", "id"):
        step: dict[str, Any] = {"key": row.key}
        options = dict(row.options or {})
        if row.kind == StepKind.AGENT:
            step["agent"] = row.agent.name if row.agent else None
        elif row.kind == StepKind.WORKFLOW:
            step["workflow"] = row.sub_workflow.key if row.sub_workflow else None
        else:
            step[row.kind] = options.pop(row.kind, {})
        after = [a.strip() for a in row.after.split(",") if a.strip()]
        if after:
            step["after"] = after
        if row.input is not None:
            step["input"] = row.input
        if row.when:
            step["when"] = row.when
        if row.for_each:
            step["for_each"] = row.for_each
        if row.concurrency is not None:
            step["concurrency"] = row.concurrency
        if row.loop:
            step["loop"] = row.loop
        step.update(options)
        steps.append(step)
    raw: dict[str, Any] = {
        "key": workflow.key,
        "name": workflow.name,
        "description": workflow.description,
        "owner": workflow.owner.get_username() if workflow.owner else None,
        "inputs": workflow.inputs or {},
        "steps": steps,
    }
    if workflow.on_cancel != "nothing":
        raw["on_cancel"] = workflow.on_cancel
    if workflow.on_failure != "fail":
        raw["on_failure"] = workflow.on_failure
    if workflow.allow_self_approval:
        raw["allow_self_approval"] = True
    access = workflow_access(workflow)
    if access:
        raw["access"] = access
    if workflow.triggers:
        raw["triggers"] = workflow.triggers
    if workflow.output.strip():
        text = workflow.output.strip()
        parsed = yaml.safe_load(text) if not text.startswith("{{") else text
        raw["output"] = parsed
    return raw


def workflow_access(workflow: Workflow) -> dict[str, list[str]]:
    """The workflow's viewer and operator groups as the file writes them (empty lists left out)."""
    access: dict[str, list[str]] = {}
    for name, groups in (("viewers", workflow.viewer_groups), ("operators", workflow.operator_groups)):
        names = sorted(groups.values_list("name", flat=True))
        if names:
            access[name] = names
    return access


def publish_draft(workflow: Workflow, *, user: Any = None, note: str = "") -> WorkflowVersion:
    """Validate the draft and freeze it as the next version; raises SpecError, saving nothing."""
    spec = check_draft(workflow)
    with transaction.atomic():
        return _publish(workflow, spec, user=user, note=note or "published from the draft")


def _publish(
    workflow: Workflow, spec: WorkflowSpec, *, user: Any, note: str
) -> WorkflowVersion:
    # Lock the workflow row so two publishers cannot both take the same number.
    Workflow.objects.select_for_update(no_key=True).filter(pk=workflow.pk).first()
    latest = workflow.versions.filter(trial=False).order_by("-number").first()
    if latest is not None and latest.spec == spec:
        return latest  # nothing changed: publishing again would only add a duplicate version
    return _new_version(workflow, (latest.number if latest else 0) + 1, spec, user=user, note=note)


def _new_version(workflow: Workflow, number: int, spec: Any, *, user: Any, note: str) -> WorkflowVersion:
    version = WorkflowVersion.objects.create(
        workflow=workflow,
        number=number,
        spec=spec,
        published_by=user if user is not None and user.is_authenticated else None,
        note=note[:200],
    )
    for hook in ON_PUBLISH:
        hook(version)
    return version


# What other apps keep in step with the published version (the triggers app's rows), called
# inside the publishing transaction; registered in AppConfig.ready so this module never
# imports them.
ON_PUBLISH: list[Callable[[WorkflowVersion], None]] = []


def register_on_publish(hook: Callable[[WorkflowVersion], None]) -> None:
    if hook not in ON_PUBLISH:
        ON_PUBLISH.append(hook)


def check_draft(workflow: Workflow) -> WorkflowSpec:
    """The draft validated as publishing would (references and template names included);
    raises SpecError listing every problem."""
    return normalise_workflow(draft_to_raw(workflow), current_catalog())


TRIAL_TRIGGER = "trial"


def try_draft(*, workflow: Workflow, input: Any, actor: Any) -> Run:
    """Start a run of the draft as it stands, without publishing it.

    The draft is checked as publishing checks it and frozen as a trial version (reused while
    the draft does not change): runs need an immutable spec to point at, and a trial is never
    the workflow's latest version, so new runs and the rollouts keep the published one. The
    run's start event names its trigger, "trial", and who started it.

    Raises SpecError naming every problem of the draft and ValueError naming every bad input
    field (start_run's check against the draft's inputs); nothing is written in either case.
    """
    spec = check_draft(workflow)
    with transaction.atomic():
        # The publishers' lock: two trials of one draft cannot both take the same number.
        Workflow.objects.select_for_update(no_key=True).filter(pk=workflow.pk).first()
        last = workflow.versions.filter(trial=True).order_by("-number").first()
        if last is not None and last.spec == spec:
            version = last
        else:
            who = actor.get_username() if actor is not None and actor.is_authenticated else "someone"
            version = WorkflowVersion.objects.create(
                workflow=workflow,
                number=(last.number if last else 0) + 1,
                spec=spec,
                trial=True,
                published_by=actor if actor is not None and actor.is_authenticated else None,
                note=f"trial of the draft by {who}"[:200],
            )
        # A bad input raises here and rolls the new trial version back with it.
        return transitions.start_run(
            workflow=workflow, version=version, input=input, started_by=actor, trigger=TRIAL_TRIGGER
        )


class RollBackRefused(ValueError):
    """Why an earlier version was not published again, in words for the person who asked."""


def roll_back_to(*, workflow: Workflow, number: int, actor: Any) -> WorkflowVersion:
    """Publish version `number` again, unchanged, as the newest version.

    Versions are immutable and runs point at the one they started on, so a roll back never
    rewrites history: runs in flight keep their version and new runs take the copy. The draft is
    left as it is (it may hold work in progress). Raises RollBackRefused when `number` is not a
    version of the workflow, is already the latest, or has the latest's spec.
    """
    with transaction.atomic():
        # The same lock as publishing: two roll backs (or a roll back and a publish) cannot
        # both take the next number.
        Workflow.objects.select_for_update(no_key=True).filter(pk=workflow.pk).first()
        # A trial of the draft is no version to roll back to.
        versions = workflow.versions.filter(trial=False).order_by("-number")
        latest = versions.first()
        target = versions.filter(number=number).first()
        if target is None or latest is None:
            raise RollBackRefused(f"{workflow.key} has no version {number}.")
        if target.number == latest.number:
            raise RollBackRefused(f"v{number} is already the latest version; nothing to roll back.")
        if target.spec == latest.spec:
            raise RollBackRefused(f"v{number} is the same as the latest version, v{latest.number}; nothing to roll back.")
        who = actor.get_username() if actor is not None and actor.is_authenticated else "someone"
        return _new_version(workflow, latest.number + 1, target.spec, user=actor, note=f"rolled back to v{number} by {who}")


MAX_WEIGHT = 10_000


def set_version_weights(*, agent: Agent, weights: Mapping[str, int], actor: Any = None, reason: str = "") -> AgentVersionEvent | None:
    """Set the traffic weights of an agent's versions (labels not named keep theirs) and
    record who did it and why. Runs that already chose a version keep it (they are sticky);
    new runs pick by the new weights. None if nothing changed. Raises ValueError naming the
    label and the problem, writing nothing.
    """
    with transaction.atomic():
        # The agent row serialises two people shifting the same agent's weights.
        Agent.objects.select_for_update().filter(pk=agent.pk).first()
        versions = {v.label: v for v in AgentVersion.objects.filter(agent=agent)}
        for label, weight in weights.items():
            if label not in versions:
                raise ValueError(f"weights: '{label}' is not a version of agent '{agent.name}'")
            if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_WEIGHT:
                raise ValueError(f"weights: '{label}' must be a whole number from 0 to {MAX_WEIGHT}")
        before = {label: v.weight for label, v in versions.items()}
        after = {**before, **weights}
        if after == before:
            return None
        for label, weight in weights.items():
            if versions[label].weight != weight:
                AgentVersion.objects.filter(pk=versions[label].pk).update(weight=weight)
        return AgentVersionEvent.objects.create(
            agent=agent,
            weights_before=before,
            weights_after=after,
            actor=actor if actor is not None and getattr(actor, "is_authenticated", False) else None,
            reason=reason[:2000],
        )


def agent_spec(agent: Agent) -> AgentSpec:
    """The agent row in the shape `normalise_agent` gives it."""
    return {
        "name": agent.name,
        "kind": agent.kind,
        "description": agent.description,
        "config": agent.config,
        "timeout": agent.timeout_seconds,
        "retry": agent.retry,
        "fallback": agent.fallback,
        "circuit": agent.circuit,
        "max_concurrency": agent.max_concurrency,
        "risk": cast(RiskLevel, agent.risk),  # the field's choices are the same three
        "versions": [
            {"label": v.label, "config": v.config, "weight": v.weight, "note": v.note}
            for v in agent.versions.order_by("label")
        ],
    }


def export_document(key: str, *, as_json: bool = False) -> str:
    """The latest published version of a workflow, with the agents it uses, as a file."""
    workflow = Workflow.objects.get(key=key)
    version = workflow.latest_version
    if version is None:
        raise SpecError([f"workflow '{key}': has no published version yet"])
    names: set[str] = set()
    for step in version.spec["steps"]:
        names.update(n for n in (*step_agents(step), step.get("fallback"), (step.get("compensate") or {}).get("agent")) if n)
    # Fallback agents of those agents too, transitively, so the file imports on its own.
    rows: dict[str, Agent] = {}
    pending = names
    while pending:
        found = {a.name: a for a in Agent.objects.filter(name__in=pending)}
        rows.update(found)
        pending = {a.fallback for a in found.values() if a.fallback and a.fallback not in rows}
    agents: list[Mapping[str, Any]] = [agent_spec(rows[n]) for n in sorted(rows)]
    # Access is the workflow's current setting, not the version's (admin may have changed it
    # since): re-importing the export must not take anyone's access away.
    spec = {key: value for key, value in version.spec.items() if key != "access"}
    access = workflow_access(workflow)
    if access:
        spec["access"] = access
    return dump_document(agents, spec, as_json=as_json)
