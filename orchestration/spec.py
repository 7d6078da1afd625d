"""The workflow file format: parsing, validation and normalisation.

`validate_document` turns a parsed YAML/JSON document into normalised agent and workflow specs
or raises SpecError listing every problem, each naming where it is and what is wrong. Nothing
here touches the database except to look up agents and workflows that already exist.
The format is documented in docs/workflow-format.md.
"""

from __future__ import annotations

import difflib
import importlib
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, NotRequired, Required, TypedDict, cast

import yaml
from django.core.exceptions import ValidationError
from django.core.validators import EmailValidator

from orchestration import limits
from orchestration.agents import registry as agent_registry
from orchestration.agents import secrets as agent_secrets
from orchestration.durations import format_duration, parse_duration
from orchestration.templating import (
    TemplateError,
    check_expression,
    check_template,
    environment,
    name_paths,
    referenced_steps,
)

StepKindName = Literal["agent", "workflow", "approval", "manual", "wait", "route", "end"]
STEP_KINDS: tuple[StepKindName, ...] = ("agent", "workflow", "approval", "manual", "wait", "route", "end")
STEP_FIELDS = {
    "key",
    "name",
    "description",
    *STEP_KINDS,
    "agents",
    "workflows",
    "item_key",
    "after",
    "input",
    "when",
    "for_each",
    "concurrency",
    "loop",
    "timeout",
    "retry",
    "fallback",
    "compensate",
    "gate",
    "on_failure",
}
WORKFLOW_FIELDS = {
    "key",
    "name",
    "description",
    "owner",
    "inputs",
    "output",
    "steps",
    "on_cancel",
    "on_failure",
    "allow_self_approval",
    "access",
    "triggers",
}
APPROVERS_FIELDS = {"users", "groups"}
# Who sees and who operates the workflow's runs, besides its owner (orchestration/access.py).
ACCESS_FIELDS = {"viewers", "operators"}
DECISION_FIELDS = {"approvers", "required", "deadline", "remind_before", "on_timeout", "escalate_to"}
APPROVAL_FIELDS = DECISION_FIELDS | {"title", "details", "on_reject"}
GATE_FIELDS = DECISION_FIELDS | {"title"}
MANUAL_FIELDS = {"title", "instructions", "assignees", "form", "deadline", "remind_before", "on_timeout", "escalate_to"}
AGENT_FIELDS = {
    "name",
    "kind",
    "description",
    "config",
    "timeout",
    "retry",
    "fallback",
    "circuit",
    "max_concurrency",
    "risk",
    "versions",
}
VERSION_FIELDS = {"label", "config", "weight", "note"}
MAX_VERSION_LABEL = 50  # AgentVersion.label
MAX_VERSION_NOTE = 200  # AgentVersion.note
MAX_VERSION_WEIGHT = 10_000
MAX_VERSIONS = 50  # versions of one agent
CIRCUIT_FIELDS = {"failures", "window", "cooldown"}
COMPENSATE_FIELDS = {"agent", "input", "retry"}
HTTP_CONFIG = {"url", "method", "headers", "timeout"}
HTTP_METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}
LLM_CONFIG = {
    "base_url",
    "model",
    "api_key_env",
    "system",
    "prompt",
    "temperature",
    "max_tokens",
    "response",
    "context_window",
    "prices",
    "timeout",
}
DOCUMENT_FIELDS = {"agents", "workflow"}
INPUT_TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "list": (list,),
    "object": (dict,),
}
# What a list's `items` may be: one level of list, its items scalars or objects.
ITEM_TYPES = {kind: types for kind, types in INPUT_TYPES.items() if kind != "list"}
# The keywords an item schema takes: no name of its own to label, no default, no required.
ITEM_FIELDS = frozenset({"type", "enum", "minimum", "maximum", "min_length", "max_length", "pattern", "format"})
INPUT_FIELDS = ITEM_FIELDS | {"required", "default", "title", "description", "min_items", "max_items", "items"}
_KEYWORD_ORDER = (
    "required",
    "title",
    "description",
    "enum",
    "minimum",
    "maximum",
    "min_length",
    "max_length",
    "pattern",
    "format",
    "min_items",
    "max_items",
    "items",
    "default",
)
# Which types a keyword means something for; the rest apply to every type.
_APPLIES_TO = {
    "minimum": frozenset({"integer", "number"}),
    "maximum": frozenset({"integer", "number"}),
    "min_length": frozenset({"string"}),
    "max_length": frozenset({"string"}),
    "pattern": frozenset({"string"}),
    "format": frozenset({"string"}),
    "min_items": frozenset({"list"}),
    "max_items": frozenset({"list"}),
    "items": frozenset({"list"}),
}
_COUNTS = frozenset({"min_length", "max_length", "min_items", "max_items"})
INPUT_FORMATS = frozenset({"email"})
MAX_TITLE_CHARS = 200
MAX_DESCRIPTION_CHARS = 2_000
MAX_ENUM_CHOICES = 500
MAX_PATTERN_CHARS = 500
# A pattern runs on at most this much text: backtracking on a near miss grows with the text.
MAX_PATTERN_INPUT = 1_000
RETRY_FIELDS = {"attempts", "backoff", "max_backoff", "jitter"}
LOOP_FIELDS = {"back_to", "until", "max_iterations", "on_exhausted", "redo"}
ROUTE_FIELDS = {"by", "cases", "default"}
END_FIELDS = {"status", "message", "output"}
END_STATUSES = ("failed", "succeeded")
WAIT_FIELDS = {"event", "match", "for", "duration", "timeout", "on_timeout"}
AGENT_KINDS_AVAILABLE = {"python", "simulated", "http", "llm"}
DEFAULT_RETRY: RetrySpec = {"attempts": 3, "backoff": 1.0, "max_backoff": 60.0, "jitter": True}


# fullmatch, never `$`: "adv-newline\n" matched "^...$" and imported a key no URL can reach.
_SLUG = re.compile(r"[-a-zA-Z0-9_]+")
# Input and form field names are used as `input.<name>` in templates and as form field names.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME_LENGTH = 100

# Limits of the file format (docs/workflow-format.md, "Limits").
MAX_FILE_BYTES = 1_000_000  # a workflow file, checked before it is parsed
MAX_YAML_DEPTH = 64  # nesting of mappings and lists in a file
MAX_YAML_NODES = 100_000  # values in a file once its aliases (*name) are expanded
MAX_ITERATIONS = 1_000  # loop.max_iterations
MAX_DURATION_SECONDS = 366 * 86_400  # timeouts, deadlines, waits, backoffs, circuit windows


# ---------------------------------------------------------------------------------------------
# The normalised spec: what `normalise_workflow` returns and a WorkflowVersion.spec holds
# (WorkflowSpec), and what `normalise_agent` returns (AgentSpec). A key is NotRequired here
# exactly when the normaliser may leave it out; the rest are always there. The options of
# approvals, manual tasks, gates and waits keep the file's values (templates, and durations as
# written, read when the step runs), so their types are what the validation lets through.

# A duration as a file writes it ("30s", "2m", 90); `parse_duration` reads it.
Duration = str | int | float


class RetrySpec(TypedDict, total=False):
    """Only the keys the file sets; DEFAULT_RETRY fills the rest when a step runs."""

    attempts: int
    backoff: float  # seconds
    max_backoff: float  # seconds
    jitter: bool


class CircuitSpec(TypedDict, total=False):
    """Empty when the agent has no circuit breaker; otherwise all three keys."""

    failures: int
    window: float | None  # seconds
    cooldown: float | None  # seconds


RiskLevel = Literal["low", "medium", "high"]


class AgentVersionSpec(TypedDict):
    """One version of an agent: its config is laid over the agent's; weight is its share of traffic."""

    label: str
    config: dict[str, Any]
    weight: int  # 0..MAX_VERSION_WEIGHT
    note: str


class AgentSpec(TypedDict):
    name: str
    kind: str  # one of AGENT_KINDS_AVAILABLE
    risk: RiskLevel
    description: str
    config: dict[str, Any]  # the kind's settings, checked by _check_<kind>
    timeout: float | None  # seconds
    retry: RetrySpec | None
    fallback: str  # "" for none
    circuit: CircuitSpec
    max_concurrency: int | None
    versions: list[AgentVersionSpec]  # by label; empty: the agent runs with its own config


class ItemSpec(TypedDict):
    """What each item of a `list` input must be (docs/workflow-format.md, "Inputs")."""

    type: Literal["string", "integer", "number", "boolean", "object"]
    enum: NotRequired[list[Any]]
    minimum: NotRequired[float]
    maximum: NotRequired[float]
    min_length: NotRequired[int]
    max_length: NotRequired[int]
    pattern: NotRequired[str]
    format: NotRequired[Literal["email"]]


class InputSpec(TypedDict):
    """One workflow input or manual-task form field."""

    type: Literal["string", "integer", "number", "boolean", "list", "object"]
    required: NotRequired[Literal[True]]
    title: NotRequired[str]
    description: NotRequired[str]
    enum: NotRequired[list[Any]]
    minimum: NotRequired[float]
    maximum: NotRequired[float]
    min_length: NotRequired[int]
    max_length: NotRequired[int]
    pattern: NotRequired[str]
    format: NotRequired[Literal["email"]]
    min_items: NotRequired[int]
    max_items: NotRequired[int]
    items: NotRequired[ItemSpec]
    default: NotRequired[Any]


class PeopleSpec(TypedDict, total=False):
    users: list[str]
    groups: list[str]


class AccessSpec(TypedDict, total=False):
    """Group names, sorted; a list that would be empty is left out."""

    viewers: list[str]
    operators: list[str]


class DecisionSpec(TypedDict, total=False):
    """What an approval and a gate share (DECISION_FIELDS)."""

    approvers: PeopleSpec
    required: int  # approvals needed
    deadline: Duration
    remind_before: Duration
    on_timeout: Literal["reject", "approve", "escalate"]
    escalate_to: PeopleSpec  # there when on_timeout is "escalate"


class GateSpec(DecisionSpec, total=False):
    """An agent step's `gate`: a decision before the agent runs."""

    title: str


class ApprovalSpec(DecisionSpec, total=False):
    """An `approval` step's options."""

    title: Required[str]
    details: Any  # a template
    on_reject: Literal["fail", "continue"]


class ManualSpec(TypedDict, total=False):
    """A `manual` step's options."""

    title: Required[str]
    instructions: Any  # a template
    assignees: PeopleSpec
    form: dict[str, Any]  # as in the file; it validates as `inputs` do (InputSpec)
    deadline: Duration
    remind_before: Duration
    on_timeout: Literal["fail", "escalate"]
    escalate_to: PeopleSpec


# `for` is a keyword, hence the functional form. `event` or `for` is there; `timeout` only with `event`.
# `match` (a template) picks the one event, by its key, that this run waits for; `duration`
# is accepted in files as another name for `for`.
WaitSpec = TypedDict(
    "WaitSpec",
    {"event": str, "match": str, "for": Duration, "timeout": Duration, "on_timeout": Literal["fail", "continue"]},
    total=False,
)


class LoopSpec(TypedDict):
    back_to: str
    until: str  # an expression
    max_iterations: int
    on_exhausted: Literal["fail", "continue"]
    # An expression giving the items of `back_to` (a for_each step) to run again, by index or
    # by `item_key`; the others keep their outputs. Missing (or null at run time): all of them.
    redo: NotRequired[str]


class RouteSpec(TypedDict):
    """`route`: exactly one of the steps after it runs, chosen by a value."""

    by: str  # an expression: the value to route by
    cases: dict[str, str]  # the value (as text) -> the step taken
    default: str  # the step taken when no case matches


class EndSpec(TypedDict):
    """`end`: the run ends here, with this status and message (when the step's `when` holds)."""

    status: Literal["failed", "succeeded"]
    message: str  # a template
    output: NotRequired[Any]  # a template: the run's output (succeeded only)


class CompensateSpec(TypedDict):
    agent: str
    input: NotRequired[Any]  # a template
    retry: NotRequired[RetrySpec | None]


class StepSpec(TypedDict):
    """One step. Exactly one of agent/workflow/approval/manual/wait is there, named by `kind`."""

    key: str
    kind: StepKindName
    name: NotRequired[str]
    description: NotRequired[str]
    agent: NotRequired[str]  # a name, or an expression choosing one of `agents` at run time
    agents: NotRequired[list[str]]  # only with an expression as `agent`
    workflow: NotRequired[str]  # a key, or an expression choosing one of `workflows`
    workflows: NotRequired[list[str]]  # only with an expression as `workflow`
    route: NotRequired[RouteSpec]
    end: NotRequired[EndSpec]
    approval: NotRequired[ApprovalSpec]
    manual: NotRequired[ManualSpec]
    wait: NotRequired[WaitSpec]
    after: list[str]  # step keys, without repeats, in the file's order
    input: NotRequired[Any]  # a template
    when: NotRequired[str]  # an expression
    for_each: NotRequired[str]  # an expression; agent and workflow steps only
    concurrency: NotRequired[int]  # only with for_each
    item_key: NotRequired[str]  # an expression naming each item, for `loop.redo`; only with for_each
    loop: NotRequired[LoopSpec]
    gate: NotRequired[GateSpec]  # agent steps only
    on_failure: NotRequired[Literal["fail", "escalate"]]
    fallback: NotRequired[str]  # an agent name; agent steps only
    compensate: NotRequired[CompensateSpec]
    timeout: NotRequired[float | None]  # seconds
    retry: NotRequired[RetrySpec | None]


class WorkflowSpec(TypedDict):
    key: str
    name: str
    description: str
    owner: str | None  # a username
    inputs: dict[str, InputSpec]
    output: Any  # a template; None: each last step's output, by key
    steps: list[StepSpec]
    on_cancel: Literal["nothing", "compensate"]
    on_failure: Literal["fail", "escalate"]
    allow_self_approval: bool
    access: NotRequired[AccessSpec]  # only when given, so older specs compare equal
    triggers: NotRequired[list[TriggerSpec]]  # only when given, likewise


class TriggerSpec(TypedDict, total=False):
    """What starts runs besides people: one of `cron`, `webhook` or `event`, with an `input`
    template rendered against what the trigger saw (`slot`, `body`, `event`)."""

    cron: str
    timezone: str
    catch_up: int
    webhook: WebhookSpec
    event: str
    input: Any


class WebhookSpec(TypedDict):
    secret_env: str  # the name of the environment variable holding the secret, never the secret


def _check_slug(value: str, where: str, name: str, problems: Problems) -> None:
    if not _SLUG.fullmatch(value) or len(value) > MAX_NAME_LENGTH:
        problems.add(
            where,
            f"field `{name}`: {value!r} may hold only letters, digits, '-' and '_' (at most {MAX_NAME_LENGTH})",
        )


class SpecError(Exception):
    """One or more problems in a workflow file; `problems` lists them one per line."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass
class Problems:
    items: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.items.append(f"{where}: {message}")

    def raise_if_any(self) -> None:
        if self.items:
            raise SpecError(self.items)


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses, before building any Python object, a file nested deeper than
    MAX_YAML_DEPTH (PyYAML composes recursively: 100,000 levels end in RecursionError) or one
    whose aliases expand to more than MAX_YAML_NODES values (a "billion laughs" file is a few
    hundred bytes and expands to 10^9 strings, which every later walk of the tree visits)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                # types-PyYAML leaves peek_event unannotated.
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(
                    None, None, f"nested more than {MAX_YAML_DEPTH} levels deep", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: yaml.Node) -> int:
    """How many values the tree holds with every alias expanded; stops counting past the limit.

    An alias is the same node object in several places, so sizes are memoised per node; a node
    that contains itself (`&a [*a]`) expands forever and counts as too large.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            sizes[id(node)] = 1
            continue
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_NODES + 1)
            continue
        if id(node) in on_path:
            return MAX_YAML_NODES + 1
        on_path.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                return MAX_YAML_NODES + 1
            if id(child) not in sizes:
                stack.append((child, False))
    return sizes[id(root)]


def load_text(text: str, *, source: str = "<input>") -> dict[str, Any]:
    """Parse YAML (JSON is YAML too) into a mapping, within the file format's limits."""
    if len(text) > MAX_FILE_BYTES:
        raise SpecError([f"{source}: the file is {len(text):,} characters; at most {MAX_FILE_BYTES:,} are accepted"])
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and _expanded_size(node) > MAX_YAML_NODES:
            raise SpecError(
                [f"{source}: holds more than {MAX_YAML_NODES:,} values once its aliases (*name) are expanded"]
            )
        document = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}, line {mark.line + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise SpecError([f"{where}: not valid YAML or JSON ({problem})"]) from None
    except RecursionError:
        raise SpecError([f"{source}: nested too deeply"]) from None
    finally:
        loader.dispose()
    if not isinstance(document, dict):
        raise SpecError([f"{source}: the file must be a mapping with a `workflow` key"])
    try:
        # NUL characters ("\0" in a quoted string) cannot be stored; lone surrogates are no text.
        limits.check_json_value(document, field=source, max_depth=MAX_YAML_DEPTH + 1)
    except ValueError as exc:
        raise SpecError([str(exc)]) from None
    return document


# ---------------------------------------------------------------------------------------------
# Agents


def normalise_agent(raw: Any, where: str, problems: Problems) -> AgentSpec | None:
    if not isinstance(raw, dict):
        problems.add(where, "must be a mapping with at least `name` and `kind`")
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        problems.add(where, "field `name` is required")
        return None
    where = f"agent '{name}'"
    _check_slug(name, where, "name", problems)
    for unknown in sorted(set(raw) - AGENT_FIELDS):
        problems.add(where, f"unknown field `{unknown}`")
    kind = raw.get("kind")
    if kind not in AGENT_KINDS_AVAILABLE:
        problems.add(
            where, f"field `kind`: {kind!r} is not one of {sorted(AGENT_KINDS_AVAILABLE)}"
        )
    config = raw.get("config", {}) or {}
    if not isinstance(config, dict):
        problems.add(where, "field `config` must be a mapping")
        config = {}
    _check_config(str(kind), config, where, problems)
    fallback = raw.get("fallback")
    if fallback is not None and (not isinstance(fallback, str) or fallback == name):
        problems.add(where, "field `fallback` must name another agent")
        fallback = None
    max_concurrency = raw.get("max_concurrency")
    if max_concurrency is not None and (
        not isinstance(max_concurrency, int) or isinstance(max_concurrency, bool) or max_concurrency < 1
    ):
        problems.add(where, "field `max_concurrency` must be a whole number of at least 1")
        max_concurrency = None
    risk = raw.get("risk", "low")
    if risk not in ("low", "medium", "high"):
        problems.add(where, f"field `risk`: {risk!r} is not 'low', 'medium' or 'high'")
        risk = "low"
    agent: AgentSpec = {
        "name": name,
        # A kind outside AGENT_KINDS_AVAILABLE is a problem above, and then no one uses the agent.
        "kind": cast(str, kind),
        "risk": risk,
        "description": str(raw.get("description", "") or ""),
        "config": config,
        "timeout": _duration(raw.get("timeout"), where, "timeout", problems),
        "retry": normalise_retry(raw.get("retry"), where, problems),
        "fallback": fallback or "",
        "circuit": normalise_circuit(raw.get("circuit"), where, problems),
        "max_concurrency": max_concurrency,
        "versions": normalise_versions(raw.get("versions"), str(kind), config, where, problems),
    }
    return agent


def _check_config(kind: str, config: dict[str, Any], where: str, problems: Problems) -> None:
    if kind == "python":
        _check_callable(config.get("callable"), where, problems)
    elif kind == "simulated":
        _check_simulated(config, where, problems)
    elif kind == "http":
        _check_http(config, where, problems)
    elif kind == "llm":
        _check_llm(config, where, problems)
    for problem in agent_secrets.problems(kind, config):
        problems.add(where, problem)
    check_agent_template_names(kind, config, where, problems)


def config_problems(kind: str, config: dict[str, Any]) -> list[str]:
    """What is wrong with an agent's config for its kind (the file's checks), one line each."""
    problems = Problems()
    _check_config(kind, config, "config", problems)
    return [item.removeprefix("config: ") for item in problems.items]


def version_config_problems(kind: str, agent_config: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """What is wrong with a version's config: laid over the agent's, it must be a config the
    agent's kind accepts, and it may read only the secrets an agent's config may."""
    return config_problems(kind, {**agent_config, **config})


def normalise_versions(
    raw: Any, kind: str, agent_config: dict[str, Any], where: str, problems: Problems
) -> list[AgentVersionSpec]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        problems.add(where, "field `versions` must be a list of {label, config, weight, note}")
        return []
    if len(raw) > MAX_VERSIONS:
        problems.add(where, f"field `versions`: at most {MAX_VERSIONS} versions")
        return []
    found: list[AgentVersionSpec] = []
    labels: set[str] = set()
    for index, item in enumerate(raw):
        if not isinstance(item, dict) or not isinstance(item.get("label"), str) or not item["label"]:
            problems.add(where, f"versions #{index + 1}: must be a mapping with a `label`")
            continue
        label = item["label"]
        at = f"{where} version '{label}'"
        if not _SLUG.fullmatch(label) or len(label) > MAX_VERSION_LABEL:
            problems.add(at, f"field `label` may hold only letters, digits, '-' and '_' (at most {MAX_VERSION_LABEL})")
        if label in labels:
            problems.add(at, "defined twice")
        labels.add(label)
        for unknown in sorted(set(item) - VERSION_FIELDS):
            problems.add(at, f"unknown field `{unknown}`")
        config = item.get("config", {}) or {}
        if not isinstance(config, dict):
            problems.add(at, "field `config` must be a mapping")
            config = {}
        for problem in version_config_problems(kind, agent_config, config):
            problems.add(at, problem)
        weight = item.get("weight", 0)
        if isinstance(weight, bool) or not isinstance(weight, int) or not 0 <= weight <= MAX_VERSION_WEIGHT:
            problems.add(at, f"field `weight` must be a whole number from 0 to {MAX_VERSION_WEIGHT}")
            weight = 0
        note = item.get("note", "") or ""
        if not isinstance(note, str) or len(note) > MAX_VERSION_NOTE:
            problems.add(at, f"field `note` must be text of at most {MAX_VERSION_NOTE} characters")
            note = ""
        found.append({"label": label, "config": config, "weight": weight, "note": note})
    # By label, as agent_spec reads them back: a file and the rows it saved compare equal.
    return sorted(found, key=lambda v: v["label"])


def normalise_circuit(raw: Any, where: str, problems: Problems) -> CircuitSpec:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(where, "field `circuit` must be a mapping (failures, window, cooldown)")
        return {}
    for unknown in sorted(set(raw) - CIRCUIT_FIELDS):
        problems.add(where, f"field `circuit.{unknown}` is unknown")
    failures = raw.get("failures", 5)
    if not isinstance(failures, int) or isinstance(failures, bool) or failures < 1:
        problems.add(where, "field `circuit.failures` must be a whole number of at least 1")
    window = _duration(raw.get("window", "1m"), where, "circuit.window", problems)
    cooldown = _duration(raw.get("cooldown", "30s"), where, "circuit.cooldown", problems)
    return {"failures": failures, "window": window, "cooldown": cooldown}


def _check_http(config: dict[str, Any], where: str, problems: Problems) -> None:
    for unknown in sorted(set(config) - HTTP_CONFIG):
        problems.add(where, f"field `config.{unknown}` is unknown for an http agent")
    url = config.get("url")
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        problems.add(where, "field `config.url` must be an http:// or https:// URL")
    method = str(config.get("method", "POST")).upper()
    if method not in HTTP_METHODS:
        problems.add(where, f"field `config.method`: {method!r} is not one of {sorted(HTTP_METHODS)}")
    headers = config.get("headers", {})
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        problems.add(where, "field `config.headers` must map header names to strings (use ${ENV_NAME} for secrets)")
    if "timeout" in config:
        _duration(config["timeout"], where, "config.timeout", problems)


def _check_llm(config: dict[str, Any], where: str, problems: Problems) -> None:
    for unknown in sorted(set(config) - LLM_CONFIG):
        problems.add(where, f"field `config.{unknown}` is unknown for an llm agent")
    if not isinstance(config.get("model"), str) or not config.get("model"):
        problems.add(where, "field `config.model` is required")
    base_url = config.get("base_url")
    if base_url is not None and (not isinstance(base_url, str) or not base_url.startswith(("http://", "https://"))):
        problems.add(where, "field `config.base_url` must be an http:// or https:// URL")
    if config.get("response", "text") not in ("text", "json"):
        problems.add(where, "field `config.response` must be 'text' or 'json'")
    for name in ("context_window", "max_tokens"):
        value = config.get(name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            problems.add(where, f"field `config.{name}` must be a whole number of at least 1")
    prices = config.get("prices")
    if prices is not None and (
        not isinstance(prices, dict)
        or set(prices) - {"prompt", "completion"}
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in prices.values())
    ):
        problems.add(where, "field `config.prices` must be {prompt: N, completion: N} per 1,000 tokens")
    for name in ("prompt", "system"):
        if name in config:
            _check_templates(config[name], where, f"config.{name}", problems)
    if "timeout" in config:
        _duration(config["timeout"], where, "config.timeout", problems)


def _check_callable(path: Any, where: str, problems: Problems) -> None:
    # The registry decides before anything is imported: importing a module runs its code.
    reason = agent_registry.problem(path)
    if reason == agent_registry.NOT_A_PATH:
        problems.add(where, f"field `config.callable` {reason}")
    elif reason is not None:
        problems.add(where, f"field `config.callable`: {reason}")


def _check_simulated(config: dict[str, Any], where: str, problems: Problems) -> None:
    delay = config.get("delay")
    if delay is not None:
        values = delay if isinstance(delay, list) else [delay]
        for value in values:
            _duration(value, where, "config.delay", problems)
    rate = config.get("failure_rate", 0)
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 <= rate <= 1:
        problems.add(where, "field `config.failure_rate` must be a number from 0 to 1")
    if "output" in config:
        _check_templates(config["output"], where, "config.output", problems)


def normalise_retry(raw: Any, where: str, problems: Problems) -> RetrySpec | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        problems.add(where, "field `retry` must be a mapping (attempts, backoff, max_backoff, jitter)")
        return None
    for unknown in sorted(set(raw) - RETRY_FIELDS):
        problems.add(where, f"field `retry.{unknown}` is unknown")
    retry: RetrySpec = {}
    if "attempts" in raw:
        attempts = raw["attempts"]
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            problems.add(where, "field `retry.attempts` must be a whole number of at least 1")
        else:
            retry["attempts"] = attempts
    for name in ("backoff", "max_backoff"):
        if name in raw:
            seconds = _duration(raw[name], where, f"retry.{name}", problems)
            if seconds is not None:
                retry[name] = seconds
    if "jitter" in raw:
        if not isinstance(raw["jitter"], bool):
            problems.add(where, "field `retry.jitter` must be true or false")
        else:
            retry["jitter"] = raw["jitter"]
    return retry


def _duration(raw: Any, where: str, name: str, problems: Problems, *, positive: bool = False) -> float | None:
    if raw is None:
        return None
    try:
        seconds = parse_duration(raw)
    except ValueError as exc:
        problems.add(where, f"field `{name}`: {exc}")
        return None
    if seconds > MAX_DURATION_SECONDS:
        problems.add(where, f"field `{name}`: {raw!r} is longer than the maximum of {MAX_DURATION_SECONDS // 86_400} days")
        return None
    if positive and seconds <= 0:
        problems.add(where, f"field `{name}` must be a positive duration (got {raw!r})")
        return None
    return seconds


def _check_templates(value: Any, where: str, name: str, problems: Problems) -> list[Any]:
    try:
        return check_template(value)
    except TemplateError as exc:
        problems.add(where, f"field `{name}` {exc}")
        return []


# ---------------------------------------------------------------------------------------------
# Workflows


@dataclass
class Catalog:
    """What a workflow may refer to: agent names and workflow keys (with their children)."""

    agents: set[str]
    workflows: dict[str, set[str]]  # workflow key -> keys of sub-workflows it calls
    users: set[str] | None = None  # usernames a workflow may name (None: not checked)
    groups: set[str] | None = None  # group names approvers may name (None: not checked)
    # Agent name -> the keys of every output it can give, for agents whose output shape is
    # known (known_output_keys); the others are missing and their outputs are not checked.
    outputs: dict[str, frozenset[str]] = field(default_factory=dict)
    # Agent name -> its templated config fields (agent_templates), which read the step's input.
    templates: dict[str, list[AgentTemplate]] = field(default_factory=dict)


def normalise_workflow(raw: Any, catalog: Catalog) -> WorkflowSpec:
    problems = Problems()
    if not isinstance(raw, dict):
        raise SpecError(["workflow: must be a mapping with `key`, `name` and `steps`"])
    key = raw.get("key")
    if not isinstance(key, str) or not key.strip():
        raise SpecError(["workflow: field `key` is required"])
    where = f"workflow '{key}'"
    _check_slug(key, where, "key", problems)
    if catalog.users is not None and raw.get("owner") and raw["owner"] not in catalog.users:
        problems.add(where, f"field `owner`: unknown user {raw['owner']!r}")
    for unknown in sorted(set(raw) - WORKFLOW_FIELDS):
        problems.add(where, f"unknown field `{unknown}`")
    name = raw.get("name") or key
    inputs = _normalise_inputs(raw.get("inputs"), where, problems)
    raw_steps = raw.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        problems.add(where, "field `steps` must be a non-empty list")
        raw_steps = []
    steps: list[StepSpec] = []
    # Template references by step key, checked against the graph once every step is known.
    refs: dict[str, list[str]] = {}
    undo_refs: dict[str, list[str]] = {}
    seen: set[str] = set()
    # A step may name this very workflow; that is reported as recursion, not as unknown.
    local = Catalog(
        agents=catalog.agents,
        workflows={**catalog.workflows, key: set()},
        users=catalog.users,
        groups=catalog.groups,
        outputs=catalog.outputs,
        templates=catalog.templates,
    )
    for index, raw_step in enumerate(raw_steps):
        parsed = _normalise_step(raw_step, index, where, local, problems)
        if parsed is None:
            continue
        step = parsed.step
        if step["key"] in seen:
            problems.add(f"{where}, step '{step['key']}'", "duplicate key")
            continue
        seen.add(step["key"])
        steps.append(step)
        refs[step["key"]] = parsed.refs
        undo_refs[step["key"]] = parsed.undo_refs
    on_failure = raw.get("on_failure", "fail")
    if on_failure not in ("fail", "escalate"):
        problems.add(where, f"field `on_failure`: {on_failure!r} is not 'fail' or 'escalate'")
    allow_self = raw.get("allow_self_approval", False)
    if not isinstance(allow_self, bool):
        problems.add(where, "field `allow_self_approval` must be true or false")
    on_cancel = raw.get("on_cancel", "nothing")
    if on_cancel not in ("nothing", "compensate"):
        problems.add(where, f"field `on_cancel`: {on_cancel!r} is not 'nothing' or 'compensate'")
    access = _normalise_access(raw.get("access"), where, catalog, problems)
    triggers = normalise_triggers(raw.get("triggers"), where, problems)
    spec: WorkflowSpec = {
        "key": key,
        "name": str(name),
        "on_cancel": on_cancel,
        "on_failure": on_failure,
        "allow_self_approval": bool(allow_self),
        "description": str(raw.get("description", "") or ""),
        "owner": raw.get("owner") or None,
        "inputs": inputs,
        "output": raw.get("output"),
        "steps": steps,
    }
    # Only when given, so that the specs of workflows without it stay as they were.
    if access:
        spec["access"] = access
    if triggers:
        spec["triggers"] = triggers
    if spec["output"] is not None:
        trees = _check_templates(spec["output"], where, "output", problems)
        for missing in sorted(referenced_steps(trees) - seen):
            problems.add(where, f"field `output` refers to unknown step '{missing}'")
    _check_graph(spec, refs, undo_refs, where, problems)
    _check_recursion(spec, catalog, where, problems)
    if not problems.items:
        # Names are checked on a workflow that is otherwise sound: the graph says which steps
        # come earlier, and every template compiles.
        check_template_names(spec, catalog, where, problems)
    problems.raise_if_any()
    return spec


def _normalise_access(raw: Any, where: str, catalog: Catalog, problems: Problems) -> AccessSpec:
    """`access: {viewers: [group, ...], operators: [group, ...]}`; empty lists are dropped."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(where, "field `access` must be a mapping with `viewers` and/or `operators` lists of groups")
        return {}
    for unknown in sorted(set(raw) - ACCESS_FIELDS, key=str):
        problems.add(where, f"field `access.{unknown}` is unknown (use `viewers` or `operators`)")
    access: AccessSpec = {}
    for name in ("viewers", "operators"):
        groups = raw.get(name)
        if groups is None:
            continue
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            problems.add(where, f"field `access.{name}` must be a list of group names")
            continue
        if catalog.groups is not None:
            for unknown in [g for g in groups if g not in catalog.groups]:
                problems.add(where, f"field `access.{name}`: unknown group {unknown!r}")
        if groups:
            # Sorted: order means nothing here, and the same groups must give the same spec.
            access[name] = sorted(set(groups))
    return access


def _normalise_inputs(raw: Any, where: str, problems: Problems) -> dict[str, InputSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        problems.add(where, "field `inputs` must be a mapping of name to {type, required, default}")
        return {}
    inputs: dict[str, InputSpec] = {}
    for name, definition in raw.items():
        if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name) or len(name) > MAX_NAME_LENGTH:
            problems.add(
                where,
                f"input {name!r}: a name must be letters, digits and '_', not starting with a digit "
                f"(at most {MAX_NAME_LENGTH})",
            )
            continue
        at = f"{where}, input '{name}'"
        if not isinstance(definition, dict):
            problems.add(at, "must be a mapping such as {type: string, required: true}")
            continue
        item = _normalise_input(definition, at, INPUT_FIELDS, problems)
        if item is not None:
            inputs[str(name)] = cast(InputSpec, item)
    return inputs


def _normalise_input(
    definition: dict[str, Any], at: str, allowed: frozenset[str], problems: Problems, prefix: str = ""
) -> dict[str, Any] | None:
    """One input (or, with `prefix` "items.", the schema of a list's items), checked keyword by
    keyword. The keys keep the file's order and values, so the export gives the file back."""
    for unknown in sorted(set(definition) - allowed, key=str):
        problems.add(at, f"unknown field `{prefix}{unknown}` (allowed: {', '.join(sorted(allowed))})")
    kind = definition.get("type", "string")
    if not isinstance(kind, str) or kind not in (INPUT_TYPES if not prefix else ITEM_TYPES):
        choices = sorted(INPUT_TYPES if not prefix else ITEM_TYPES)
        problems.add(at, f"field `{prefix}type`: {kind!r} is not one of {choices}")
        return None
    before = len(problems.items)
    item: dict[str, Any] = {"type": kind}
    # A fixed order, the one specs were always stored in (required, description, enum, default)
    # with the later keywords between: the same file gives the same spec.
    for key in _KEYWORD_ORDER:
        if key not in definition or key not in allowed:
            continue
        value = definition[key]
        label = f"field `{prefix}{key}`"
        applies = _APPLIES_TO.get(key)
        if applies is not None and kind not in applies:
            problems.add(at, f"{label} applies only to {' and '.join(sorted(applies))} inputs, not {kind}")
            continue
        if key == "required":
            if value:
                item["required"] = True
        elif key in ("title", "description"):
            if value is None or value == "":
                continue
            value = str(value)
            limit = MAX_TITLE_CHARS if key == "title" else MAX_DESCRIPTION_CHARS
            if len(value) > limit:
                problems.add(at, f"{label} must be text of at most {limit:,} characters")
                continue
            item[key] = value
        elif key in ("minimum", "maximum"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                problems.add(at, f"{label} must be a number, not {value!r}")
                continue
            item[key] = value
        elif key in _COUNTS:
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                problems.add(at, f"{label} must be a whole number of at least 0, not {value!r}")
                continue
            item[key] = value
        elif key == "pattern":
            error = _pattern_problem(value)
            if error:
                problems.add(at, f"{label}: {error}")
                continue
            item[key] = value
        elif key == "format":
            if value not in INPUT_FORMATS:
                problems.add(at, f"{label}: {value!r} is not one of {sorted(INPUT_FORMATS)}")
                continue
            item[key] = value
        elif key == "items":
            if not isinstance(value, dict):
                problems.add(at, f"{label} must be a mapping such as {{type: string}}")
                continue
            items = _normalise_input(value, at, ITEM_FIELDS, problems, prefix="items.")
            if items is not None:
                item[key] = items
        elif key == "enum":
            item[key] = value  # checked below, once the other keywords are known
        elif key == "default":
            item[key] = value
    for low, high in (("minimum", "maximum"), ("min_length", "max_length"), ("min_items", "max_items")):
        if low in item and high in item and item[low] > item[high]:
            problems.add(at, f"field `{prefix}{low}` ({item[low]}) is more than field `{prefix}{high}` ({item[high]})")
    if len(problems.items) > before:
        return item  # the values below would be checked against a schema that is itself wrong
    if "enum" in item:
        choices = item["enum"]
        if not isinstance(choices, list) or not choices or len(choices) > MAX_ENUM_CHOICES:
            problems.add(at, f"field `{prefix}enum` must be a non-empty list of at most {MAX_ENUM_CHOICES} choices")
            del item["enum"]
        else:
            plain = {k: v for k, v in item.items() if k not in ("enum", "default")}
            for choice in choices:
                error = check_input_value(plain, choice)
                if error:
                    problems.add(at, f"field `{prefix}enum`: the choice {choice!r} does not fit ({error})")
    if "default" in item:
        error = check_input_value(item, item["default"])
        if error is None:
            try:
                limits.check_json_value(item["default"], field="field `default`", max_bytes=limits.max_input_bytes())
            except ValueError as exc:
                error = str(exc).removeprefix("field `default`: ")
        if error:
            problems.add(at, f"field `{prefix}default`: {error}")
    return item


def _pattern_problem(pattern: Any) -> str | None:
    """Why `pattern` may not be used, or None. A regular expression runs on what anyone may
    type, so it is bounded (its length, and the length of text it is run on, MAX_PATTERN_INPUT)
    and one shaped to backtrack exponentially on a near miss (`(a+)+`, `(a|ab)*`) is refused
    outright: Python's `re` has no time limit, and a stuck match holds a web worker."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a regular expression (text)"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"{len(pattern):,} characters; at most {MAX_PATTERN_CHARS:,} are allowed"
    try:
        re.compile(pattern)
    except (re.error, RecursionError, OverflowError) as exc:
        return f"not a valid regular expression ({exc})"
    risk = _backtracking_risk(pattern)
    if risk:
        return f"{risk}, which can take exponential time on a near miss: write it another way"
    return None


# The standard library's own regular-expression parser, to look at a pattern's shape. Private
# (re._parser since 3.11): if it goes away, the nesting check is skipped, the bounds remain.
try:
    _RE_PARSER: Any = importlib.import_module("re._parser")
    _RE_SUBPATTERN: Any = _RE_PARSER.SubPattern
except (ImportError, AttributeError):  # pragma: no cover
    _RE_PARSER, _RE_SUBPATTERN = None, ()


def _backtracking_risk(pattern: str) -> str | None:
    """Why `pattern` may take exponential time on a near miss, or None: a variable repetition
    inside another (`(a+)+`), or a repeated choice whose alternatives may start alike
    (`(a|ab)*`). A cautious reading: `([a-z]+\\.)+` is safe yet refused; say it otherwise."""
    try:
        tree = _RE_PARSER.parse(pattern)
    except Exception:  # the private parser moved: compile() already vouched for the pattern
        return None

    def children(argument: Any) -> list[Any]:
        found: list[Any] = []
        for part in argument if isinstance(argument, (list, tuple)) else [argument]:
            if isinstance(part, _RE_SUBPATTERN):
                found.append(part)
            elif isinstance(part, (list, tuple)):
                found += [inner for inner in part if isinstance(inner, _RE_SUBPATTERN)]
        return found

    def first_literal(branch: Any) -> Any:
        items = list(branch)
        return items[0][1] if items and str(items[0][0]) == "LITERAL" else None

    def walk(node: Any, inside: bool) -> str | None:
        for op, argument in node:
            name = str(op)
            if name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                low, high, body = argument
                varies = high > 1 and high != low  # `b{2}` is no choice, so no backtracking
                if varies and inside:
                    return "repeats a part that itself repeats (such as `(a+)+`)"
                found = walk(body, inside or varies)
            elif name == "BRANCH" and inside:
                starts = [first_literal(branch) for branch in argument[1]]
                if None in starts or len(set(starts)) < len(starts):
                    return "repeats a choice whose alternatives may start alike (such as `(a|ab)*`)"
                found = next((w for w in (walk(c, inside) for c in children(argument)) if w), None)
            else:
                found = next((w for w in (walk(c, inside) for c in children(argument)) if w), None)
            if found:
                return found
        return None

    return walk(tree, False)


TRUE_WORDS = frozenset({"true", "on", "yes", "1"})
FALSE_WORDS = frozenset({"false", "off", "no", "0"})


def value_from_text(kind: str, raw: Any) -> Any:
    """A schema value from what an HTML form sent (text); typed values pass through.

    Raises ValueError with a message a person can act on.
    """
    if not isinstance(raw, str) or kind == "string":
        return raw
    text = raw.strip()
    if kind == "integer":
        try:
            return int(text)
        except ValueError:
            raise ValueError("enter a whole number") from None
    if kind == "number":
        try:
            return int(text)
        except ValueError:
            pass
        try:
            number = float(text)
        except ValueError:
            raise ValueError("enter a number") from None
        if not math.isfinite(number):
            raise ValueError("enter a finite number")
        return number
    if kind == "boolean":
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise ValueError("enter true or false")
    if kind in ("list", "object"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})") from None
        except RecursionError:
            raise ValueError("nested too deeply") from None
    return raw


def check_input_value(definition: Mapping[str, Any], value: Any) -> str | None:
    """What is wrong with `value` for this input, in words that follow "input `name`: ", or
    None. The one check of every entry point: the start form, the API, commands, reruns,
    manual task forms and a schema's own default and choices."""
    kind = definition.get("type", "string")
    types = INPUT_TYPES[kind]
    if isinstance(value, bool) and kind != "boolean":
        return f"expected {kind}, got a boolean"
    if not isinstance(value, types):
        return f"expected {kind}, got {type(value).__name__}"
    if "enum" in definition and value not in definition["enum"]:
        return f"{value!r} is not one of {definition['enum']}"
    if kind in ("integer", "number"):
        if "minimum" in definition and value < definition["minimum"]:
            return f"{value} is less than the minimum {definition['minimum']}"
        if "maximum" in definition and value > definition["maximum"]:
            return f"{value} is more than the maximum {definition['maximum']}"
    elif isinstance(value, str):
        return _string_problem(definition, value)
    elif isinstance(value, list):
        if "min_items" in definition and len(value) < definition["min_items"]:
            return f"{_count(len(value), 'item')}, at least {definition['min_items']} are needed"
        if "max_items" in definition and len(value) > definition["max_items"]:
            return f"{_count(len(value), 'item')}, at most {definition['max_items']} are allowed"
        if "items" in definition:
            for number, entry in enumerate(value, start=1):
                error = check_input_value(definition["items"], entry)
                if error:
                    return f"item {number}: {error}"
    return None


def _string_problem(definition: Mapping[str, Any], value: str) -> str | None:
    if definition.get("required") and not value.strip():
        return "required"
    if "min_length" in definition and len(value) < definition["min_length"]:
        return f"{_count(len(value), 'character')}, at least {definition['min_length']} are needed"
    if "max_length" in definition and len(value) > definition["max_length"]:
        return f"{_count(len(value), 'character')}, at most {definition['max_length']} are allowed"
    if "pattern" in definition:
        if len(value) > MAX_PATTERN_INPUT:
            return f"{_count(len(value), 'character')}, at most {MAX_PATTERN_INPUT:,} are checked against a pattern"
        if re.fullmatch(definition["pattern"], value) is None:
            return f"{value!r} does not match the pattern {definition['pattern']}"
    if definition.get("format") == "email":
        try:
            EmailValidator()(value)
        except ValidationError:
            return f"{value!r} is not an email address"
    return None


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class _ParsedStep(NamedTuple):
    step: StepSpec
    refs: list[str]  # steps its templates read
    undo_refs: list[str]  # steps its compensation's input reads


def _normalise_step(
    raw: Any, index: int, where: str, catalog: Catalog, problems: Problems
) -> _ParsedStep | None:
    if not isinstance(raw, dict):
        problems.add(f"{where}, step #{index + 1}", "must be a mapping with a `key`")
        return None
    key = raw.get("key")
    if not isinstance(key, str) or not key.strip():
        problems.add(f"{where}, step #{index + 1}", "field `key` is required")
        return None
    at = f"{where}, step '{key}'"
    _check_slug(key, at, "key", problems)
    for unknown in sorted(set(raw) - STEP_FIELDS):
        problems.add(at, f"unknown field `{unknown}`")
    kinds = [k for k in STEP_KINDS if k in raw]
    if len(kinds) != 1:
        said = ", ".join(f"`{k}`" for k in kinds) or "none"
        problems.add(at, f"must have exactly one of {', '.join(f'`{k}`' for k in STEP_KINDS)} (has {said})")
        return None
    kind = kinds[0]
    # `after` comes below, so that the keys keep the order versions have always been stored in.
    step = cast(StepSpec, {"key": key, "kind": kind})
    for optional in ("name", "description"):
        if raw.get(optional):
            step[optional] = str(raw[optional])
    kind_trees: list[Any] = []
    for name, plural, known in (("agent", "agents", set(catalog.agents)), ("workflow", "workflows", set(catalog.workflows))):
        if kind != name:
            if plural in raw:
                problems.add(at, f"field `{plural}` only applies to `{name}` steps")
            continue
        value = raw[name]
        if chosen_at_run_time(value):
            # The name is an expression: it must give one of a declared set, each checked now.
            try:
                kind_trees.append(check_expression(value))
            except TemplateError as exc:
                problems.add(at, f"field `{name}` {exc}")
            step[name] = value
            step[plural] = _choice_set(raw.get(plural), at, name, plural, known, problems)  # type: ignore[literal-required]
            continue
        if not isinstance(value, str) or value not in known:
            problems.add(at, f"field `{name}`: unknown {name} {value!r}")
        if plural in raw:
            problems.add(
                at, f"field `{plural}` only applies when `{name}` is an expression choosing one of them at run time"
            )
        step[name] = value
    if kind in ("agent", "workflow"):
        pass
    elif kind == "route":
        route = _normalise_route(raw["route"], at, problems)
        if route is not None:
            step["route"] = route
            try:
                kind_trees.append(check_expression(route["by"]))
            except TemplateError as exc:
                problems.add(at, f"field `route.by` {exc}")
    elif kind == "end":
        end = _normalise_end(raw["end"], at, problems)
        if end is not None:
            step["end"] = end
            kind_trees += _check_templates({k: v for k, v in end.items() if k != "status"}, at, "end", problems)
    else:
        options = raw[kind] or {}
        if not isinstance(options, dict):
            problems.add(at, f"field `{kind}` must be a mapping")
            options = {}
        kind_trees = _check_templates(options, at, kind, problems)
        # The checks above and below vouch for the shapes the casts name.
        if kind == "wait":
            _check_wait(options, at, problems)
            step["wait"] = cast(WaitSpec, options)
        elif kind == "approval":
            _check_decision(options, at, "approval", APPROVAL_FIELDS, catalog, problems)
            on_reject = options.get("on_reject", "fail")
            if on_reject not in ("fail", "continue"):
                problems.add(at, f"field `approval.on_reject`: {on_reject!r} is not 'fail' or 'continue'")
            if not isinstance(options.get("title"), str) or not options.get("title"):
                problems.add(at, "field `approval.title` is required")
            step["approval"] = cast(ApprovalSpec, options)
        elif kind == "manual":
            _check_manual(options, at, catalog, problems)
            step["manual"] = cast(ManualSpec, options)
    after = raw.get("after", [])
    if isinstance(after, str):
        after = [after]
    if not isinstance(after, list) or not all(isinstance(a, str) for a in after):
        problems.add(at, "field `after` must be a list of step keys")
        after = []
    step["after"] = list(dict.fromkeys(after))
    trees: list[Any] = []
    if "input" in raw:
        step["input"] = raw["input"]
        trees += _check_templates(raw["input"], at, "input", problems)
    if raw.get("for_each") is not None and kind not in ("agent", "workflow"):
        problems.add(at, "field `for_each` only applies to `agent` and `workflow` steps")
    if "input" in raw and kind in ("route", "end"):
        problems.add(at, f"field `input` does not apply to a `{kind}` step")
    if "item_key" in raw and raw.get("for_each") is None:
        problems.add(at, "field `item_key` only applies to a `for_each` step")
    for name in ("when", "for_each", "item_key"):
        if name in raw and raw[name] is not None:
            if not isinstance(raw[name], str):
                problems.add(at, f"field `{name}` must be an expression string")
                continue
            try:
                trees.append(check_expression(raw[name]))
            except TemplateError as exc:
                problems.add(at, f"field `{name}` {exc}")
            cast(dict[str, Any], step)[name] = raw[name]
    if "concurrency" in raw:
        value = raw["concurrency"]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.add(at, "field `concurrency` must be a whole number of at least 1")
        elif "for_each" not in raw:
            problems.add(at, "field `concurrency` only applies to a `for_each` step")
        else:
            step["concurrency"] = value
    if "loop" in raw:
        loop = _normalise_loop(raw["loop"], at, problems)
        if loop is not None:
            step["loop"] = loop
            for name in ("until", "redo"):
                if name not in loop:
                    continue
                try:
                    trees.append(check_expression(loop[name]))  # type: ignore[literal-required]
                except TemplateError as exc:
                    problems.add(at, f"field `loop.{name}` {exc}")
    if "gate" in raw:
        gate = raw["gate"] if raw["gate"] is not None else {}
        if kind != "agent":
            problems.add(at, "field `gate` only applies to `agent` steps")
        elif not isinstance(gate, dict):
            problems.add(at, "field `gate` must be a mapping (approvers, required, deadline...)")
        else:
            _check_decision(gate, at, "gate", GATE_FIELDS, catalog, problems)
            trees += _check_templates(gate, at, "gate", problems)
            step["gate"] = cast(GateSpec, gate)
    if "on_failure" in raw:
        if raw["on_failure"] not in ("fail", "escalate"):
            problems.add(at, f"field `on_failure`: {raw['on_failure']!r} is not 'fail' or 'escalate'")
        else:
            step["on_failure"] = raw["on_failure"]
    if "fallback" in raw:
        if kind != "agent":
            problems.add(at, "field `fallback` only applies to `agent` steps")
        elif raw["fallback"] == raw["agent"]:
            problems.add(at, f"field `fallback` names the step's own agent {raw['agent']!r}; name another agent")
        elif raw["fallback"] not in catalog.agents:
            problems.add(at, f"field `fallback`: unknown agent {raw['fallback']!r}")
        else:
            step["fallback"] = raw["fallback"]
    undo_refs: list[str] = []
    if "compensate" in raw:
        compensate = _normalise_compensate(raw["compensate"], at, catalog, problems)
        if compensate is not None:
            step["compensate"] = compensate
            undo_trees = _check_templates(compensate.get("input"), at, "compensate.input", problems)
            undo_refs = sorted(referenced_steps(undo_trees))
    if "timeout" in raw:
        step["timeout"] = _duration(raw["timeout"], at, "timeout", problems)
    if "retry" in raw:
        step["retry"] = normalise_retry(raw["retry"], at, problems)
    return _ParsedStep(step, sorted(referenced_steps(trees + kind_trees)), undo_refs)


def chosen_at_run_time(name: Any) -> bool:
    """Whether a step's `agent` or `workflow` is an expression rather than a name."""
    return isinstance(name, str) and ("{{" in name or "{%" in name)


def step_agents(step: Mapping[str, Any]) -> list[str]:
    """The agents a step may run as its own (not its fallback): its agent, or its declared set."""
    if step.get("kind", "agent") != "agent":
        return []
    if chosen_at_run_time(step.get("agent")):
        return list(step.get("agents") or [])
    return [str(step["agent"])] if step.get("agent") else []


def step_workflows(step: Mapping[str, Any]) -> list[str]:
    """The sub-workflows a step may start: its workflow, or its declared set."""
    if step.get("kind") != "workflow":
        return []
    if chosen_at_run_time(step.get("workflow")):
        return list(step.get("workflows") or [])
    return [str(step["workflow"])] if step.get("workflow") else []


def _choice_set(raw: Any, at: str, name: str, plural: str, known: set[str], problems: Problems) -> list[str]:
    if raw is None:
        problems.add(at, f"field `{plural}` is required when `{name}` is an expression: list the {plural} it may choose")
        return []
    if not isinstance(raw, list) or not raw or not all(isinstance(n, str) for n in raw):
        problems.add(at, f"field `{plural}` must be a non-empty list of {name} names")
        return []
    for unknown in [n for n in raw if n not in known]:
        problems.add(at, f"field `{plural}`: unknown {name} {unknown!r}")
    return list(dict.fromkeys(raw))


def case_text(value: Any) -> str:
    """A route's value as its cases are written: text as it is, anything else as JSON
    (`true`, `2`), so a case written `true:` or `2:` in YAML matches it."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _normalise_route(raw: Any, at: str, problems: Problems) -> RouteSpec | None:
    if not isinstance(raw, dict):
        problems.add(at, "field `route` must be a mapping with `by`, `cases` and `default`")
        return None
    for unknown in sorted(set(raw) - ROUTE_FIELDS, key=str):
        problems.add(at, f"field `route.{unknown}` is unknown")
    ok = True
    if not isinstance(raw.get("by"), str) or not raw["by"].strip():
        problems.add(at, "field `route.by` must be an expression giving the value to route by")
        ok = False
    cases = raw.get("cases")
    if not isinstance(cases, dict) or not cases or not all(isinstance(v, str) for v in cases.values()):
        problems.add(at, "field `route.cases` must map each value to the key of the step it takes")
        ok = False
    if "default" not in raw:
        problems.add(at, "field `route.default` is required: the step to take when no case matches")
        ok = False
    elif not isinstance(raw["default"], str):
        problems.add(at, "field `route.default` must name a step")
        ok = False
    if not ok:
        return None
    assert isinstance(cases, dict)
    return {"by": raw["by"], "cases": {case_text(k): v for k, v in cases.items()}, "default": raw["default"]}


def _normalise_end(raw: Any, at: str, problems: Problems) -> EndSpec | None:
    if not isinstance(raw, dict):
        problems.add(at, "field `end` must be a mapping with `status` and `message`")
        return None
    for unknown in sorted(set(raw) - END_FIELDS, key=str):
        problems.add(at, f"field `end.{unknown}` is unknown")
    ok = True
    if raw.get("status") not in END_STATUSES:
        problems.add(at, f"field `end.status`: {raw.get('status')!r} is not 'failed' or 'succeeded'")
        ok = False
    if not isinstance(raw.get("message"), str) or not raw["message"].strip():
        problems.add(at, "field `end.message` is required: what the run's end says")
        ok = False
    if "output" in raw and raw.get("status") != "succeeded":
        problems.add(at, "field `end.output` only applies to `status: succeeded`")
        ok = False
    if not ok:
        return None
    end: EndSpec = {"status": raw["status"], "message": raw["message"]}
    if "output" in raw:
        end["output"] = raw["output"]
    return end


def _normalise_compensate(raw: Any, at: str, catalog: Catalog, problems: Problems) -> CompensateSpec | None:
    if not isinstance(raw, dict) or "agent" not in raw:
        problems.add(at, "field `compensate` must be a mapping with `agent` (and optionally `input`, `retry`)")
        return None
    for unknown in sorted(set(raw) - COMPENSATE_FIELDS):
        problems.add(at, f"field `compensate.{unknown}` is unknown")
    if raw["agent"] not in catalog.agents:
        problems.add(at, f"field `compensate.agent`: unknown agent {raw['agent']!r}")
    compensate: CompensateSpec = {"agent": raw["agent"]}
    if "input" in raw:
        compensate["input"] = raw["input"]
    if raw.get("retry") is not None:
        compensate["retry"] = normalise_retry(raw["retry"], at, problems)
    return compensate


def _check_people(value: Any, at: str, name: str, catalog: Catalog, problems: Problems) -> None:
    if not isinstance(value, dict) or set(value) - APPROVERS_FIELDS:
        problems.add(at, f"field `{name}` must be a mapping with `users` and/or `groups` lists")
        return
    for field_name, known, label in (("users", catalog.users, "user"), ("groups", catalog.groups, "group")):
        names = value.get(field_name, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            problems.add(at, f"field `{name}.{field_name}` must be a list of names")
            continue
        if known is not None:
            for unknown in [n for n in names if n not in known]:
                problems.add(at, f"field `{name}.{field_name}`: unknown {label} {unknown!r}")


def _check_decision(
    options: dict[str, Any], at: str, kind: str, allowed: set[str], catalog: Catalog, problems: Problems
) -> None:
    for unknown in sorted(set(options) - allowed):
        problems.add(at, f"field `{kind}.{unknown}` is unknown")
    if "approvers" in options:
        _check_people(options["approvers"], at, f"{kind}.approvers", catalog, problems)
    required = options.get("required", 1)
    if not isinstance(required, int) or isinstance(required, bool) or required < 1:
        problems.add(at, f"field `{kind}.required` must be a whole number of at least 1")
    for name in ("deadline", "remind_before"):
        if name in options:
            _duration(options[name], at, f"{kind}.{name}", problems)
    on_timeout = options.get("on_timeout", "reject")
    if on_timeout not in ("reject", "approve", "escalate"):
        problems.add(at, f"field `{kind}.on_timeout`: {on_timeout!r} is not 'reject', 'approve' or 'escalate'")
    if on_timeout == "escalate":
        if "escalate_to" not in options:
            problems.add(at, f"field `{kind}.escalate_to` is required when on_timeout is 'escalate'")
        if "deadline" not in options:
            problems.add(at, f"field `{kind}.deadline` is required when on_timeout is 'escalate'")
    if "escalate_to" in options:
        _check_people(options["escalate_to"], at, f"{kind}.escalate_to", catalog, problems)


def _check_manual(options: dict[str, Any], at: str, catalog: Catalog, problems: Problems) -> None:
    for unknown in sorted(set(options) - MANUAL_FIELDS):
        problems.add(at, f"field `manual.{unknown}` is unknown")
    if not isinstance(options.get("title"), str) or not options.get("title"):
        problems.add(at, "field `manual.title` is required")
    if "assignees" in options:
        _check_people(options["assignees"], at, "manual.assignees", catalog, problems)
    form = options.get("form", {})
    if not isinstance(form, dict):
        problems.add(at, "field `manual.form` must map field names to {type, required, ...}")
    else:
        _normalise_inputs(form, f"{at}, form", problems)
    for name in ("deadline", "remind_before"):
        if name in options:
            _duration(options[name], at, f"manual.{name}", problems)
    on_timeout = options.get("on_timeout", "escalate" if "escalate_to" in options else "fail")
    if on_timeout not in ("fail", "escalate"):
        problems.add(at, f"field `manual.on_timeout`: {on_timeout!r} is not 'fail' or 'escalate'")
    if "escalate_to" in options:
        _check_people(options["escalate_to"], at, "manual.escalate_to", catalog, problems)


def _check_wait(options: dict[str, Any], at: str, problems: Problems) -> None:
    if "duration" in options:
        if "for" in options:
            problems.add(at, "field `wait`: give `duration` or `for`, not both (they are the same)")
        options["for"] = options.pop("duration")
    if options.get("event") is not None and (not isinstance(options["event"], str) or len(options["event"]) > 100):
        problems.add(at, "field `wait.event` must be an event name of at most 100 characters")
    for name in ("match", "on_timeout"):
        if name in options and not options.get("event"):
            problems.add(at, f"field `wait.{name}` only applies to a wait for an `event`")
    if "match" in options and (not isinstance(options["match"], str) or len(options["match"]) > 1000):
        problems.add(at, "field `wait.match` must be a template giving the event's key, e.g. \"{{ input.order_id }}\"")
    if options.get("on_timeout", "fail") not in ("fail", "continue"):
        problems.add(at, f"field `wait.on_timeout`: {options['on_timeout']!r} is not 'fail' or 'continue'")
    if "on_timeout" in options and "timeout" not in options:
        problems.add(at, "field `wait.on_timeout` needs a `timeout`")
    if not options.get("event") and options.get("for") is None:
        problems.add(at, "field `wait` needs `event` (a name to wait for) or `for` (a duration)")
    if options.get("event") and "for" in options:
        problems.add(at, "field `wait`: use `timeout` with `event`; `for` is a plain timer")
    if "timeout" in options and not options.get("event"):
        problems.add(at, "field `wait.timeout` only applies to a wait for an `event`")
    for unknown in sorted(set(options) - WAIT_FIELDS):
        problems.add(at, f"field `wait.{unknown}` is unknown")
    for name in ("for", "timeout"):
        if name in options:
            _duration(options[name], at, f"wait.{name}", problems, positive=True)


def _normalise_loop(raw: Any, at: str, problems: Problems) -> LoopSpec | None:
    if not isinstance(raw, dict):
        problems.add(at, "field `loop` must be a mapping with back_to, until, max_iterations")
        return None
    for unknown in sorted(set(raw) - LOOP_FIELDS):
        problems.add(at, f"field `loop.{unknown}` is unknown")
    ok = True
    if not isinstance(raw.get("back_to"), str):
        problems.add(at, "field `loop.back_to` must name a step")
        ok = False
    if not isinstance(raw.get("until"), str):
        problems.add(at, "field `loop.until` must be an expression")
        ok = False
    max_iterations = raw.get("max_iterations")
    if not isinstance(max_iterations, int) or isinstance(max_iterations, bool) or max_iterations < 1:
        problems.add(at, "field `loop.max_iterations` must be a whole number of at least 1")
        ok = False
    elif max_iterations > MAX_ITERATIONS:
        problems.add(at, f"field `loop.max_iterations`: {max_iterations:,} is more than the maximum of {MAX_ITERATIONS:,}")
        ok = False
    on_exhausted = raw.get("on_exhausted", "fail")
    if on_exhausted not in ("fail", "continue"):
        problems.add(at, f"field `loop.on_exhausted`: {on_exhausted!r} is not 'fail' or 'continue'")
        ok = False
    if not ok:
        return None
    loop: LoopSpec = {
        "back_to": raw["back_to"],
        "until": raw["until"],
        "max_iterations": raw["max_iterations"],
        "on_exhausted": on_exhausted,
    }
    if raw.get("redo") is not None:
        if not isinstance(raw["redo"], str):
            problems.add(at, "field `loop.redo` must be an expression giving the items to run again")
            return None
        loop["redo"] = raw["redo"]
    return loop


def _check_graph(
    spec: WorkflowSpec,
    refs: Mapping[str, list[str]],
    undo_refs: Mapping[str, list[str]],
    where: str,
    problems: Problems,
) -> None:
    steps = {s["key"]: s for s in spec["steps"]}
    for step in spec["steps"]:
        at = f"{where}, step '{step['key']}'"
        for dependency in step["after"]:
            if dependency not in steps:
                problems.add(at, f"field `after` names missing step '{dependency}'")
            elif dependency == step["key"]:
                problems.add(at, "field `after` names the step itself")
    cycle = find_cycle({k: [d for d in s["after"] if d in steps] for k, s in steps.items()})
    if cycle:
        path = " -> ".join(cycle)
        problems.add(where, f"steps form a cycle ({path}); use `loop` to go back")
        return
    for step in spec["steps"]:
        route = step.get("route")
        if not route:
            continue
        at = f"{where}, step '{step['key']}'"
        targets = [(f"route.cases.{value}", target) for value, target in route["cases"].items()]
        for name, target in [*targets, ("route.default", route["default"])]:
            if target not in steps:
                problems.add(at, f"field `{name}` names missing step '{target}'")
            elif step["key"] not in steps[target]["after"]:
                problems.add(
                    at, f"field `{name}`: step '{target}' does not come after this step (add '{step['key']}' to its `after`)"
                )
    bodies: dict[str, set[str]] = {}
    for step in spec["steps"]:
        loop = step.get("loop")
        if not loop:
            continue
        at = f"{where}, step '{step['key']}'"
        back_to = loop["back_to"]
        if back_to not in steps:
            problems.add(at, f"field `loop.back_to` names missing step '{back_to}'")
            continue
        if "redo" in loop and not steps[back_to].get("for_each"):
            problems.add(at, f"field `loop.redo` only applies when `loop.back_to` is a `for_each` step ('{back_to}' is not)")
        body = loop_body(spec, back_to, step["key"])
        if not body:
            problems.add(
                at, f"field `loop.back_to`: '{back_to}' is not this step or a step it comes after"
            )
            continue
        for other, other_body in bodies.items():
            if body & other_body:
                problems.add(at, f"field `loop`: its steps overlap the loop of step '{other}'")
        bodies[step["key"]] = body
    after = {k: set(s["after"]) for k, s in steps.items()}
    for key, names in refs.items():
        at = f"{where}, step '{key}'"
        ancestors = _closure(key, after) - {key}
        loops = set().union(*(b for b in bodies.values() if key in b))
        # A compensation runs after its step, so it may also read the step's own output.
        for ref in undo_refs.get(key, []):
            if ref not in steps:
                problems.add(at, f"field `compensate.input` refers to unknown step '{ref}'")
            elif ref != key and ref not in ancestors:
                problems.add(at, f"field `compensate.input` refers to step '{ref}', which it does not come after")
        for ref in names:
            if ref not in steps:
                problems.add(at, f"a template refers to unknown step '{ref}'")
            elif ref not in ancestors and ref not in loops:
                problems.add(
                    at,
                    f"a template refers to step '{ref}', which it does not come after "
                    "(add it to `after`)",
                )


def loop_body(spec: Mapping[str, Any], back_to: str, looping: str) -> set[str]:
    """Steps re-run by a loop: those on a path from `back_to` to the looping step."""
    after = {s["key"]: set(s["after"]) for s in spec["steps"]}
    ancestors_of_loop = _closure(looping, after)
    dependents: dict[str, set[str]] = {k: set() for k in after}
    for key, deps in after.items():
        for dep in deps:
            dependents.setdefault(dep, set()).add(key)
    descendants_of_start = _closure(back_to, dependents)
    if back_to not in ancestors_of_loop:
        return set()
    return ancestors_of_loop & descendants_of_start


def _closure(start: str, edges: Mapping[str, set[str]]) -> set[str]:
    seen = {start}
    stack = [start]
    while stack:
        for nxt in edges.get(stack.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                stack.append(nxt)
    return seen


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str] | None:
    """A cycle in a directed graph as a list of nodes (first repeated last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if state.get(nxt) is None:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if state.get(node) is None:
            found = visit(node)
            if found:
                return found
    return None


def _check_recursion(spec: WorkflowSpec, catalog: Catalog, where: str, problems: Problems) -> None:
    graph = {k: set(v) for k, v in catalog.workflows.items()}
    graph[spec["key"]] = children_of(spec)
    cycle = find_cycle(graph)
    if cycle and spec["key"] in cycle:
        path = " -> ".join(cycle)
        problems.add(where, f"sub-workflows call themselves ({path})")


def children_of(spec: Mapping[str, Any]) -> set[str]:
    return {name for s in spec.get("steps", []) for name in step_workflows(s)}


# ---------------------------------------------------------------------------------------------
# The names templates read, checked at import and publish

# What a workflow's templates are rendered with (engine.template_context): a map step's input
# also has `item` and `index`, a compensation's input has `step` (the step it undoes).
STEP_CONTEXT = ("input", "steps", "run", "iteration")
MAP_CONTEXT = (*STEP_CONTEXT, "item", "index")
COMPENSATE_CONTEXT = (*STEP_CONTEXT, "step")
# What `steps.<key>` holds (engine.template_context), and `run`.
STEP_RESULT_FIELDS = ("output", "status", "iteration", "error")
# A route's result also says which step it took.
ROUTE_RESULT_FIELDS = (*STEP_RESULT_FIELDS, "branch")
RUN_FIELDS = ("id", "workflow")
# A simulated agent's output when its config gives none (agents/simulated.py).
SIMULATED_DEFAULT_OUTPUT = frozenset({"agent", "summary", "input"})


def known_output_keys(agent: Mapping[str, Any]) -> frozenset[str] | None:
    """The keys of every output the agent can give, or None when that is not known before it
    runs: only a simulated agent's output is known, when it is a literal mapping (or left out)
    in its config and in every version's config laid over it."""
    if agent.get("kind") != "simulated" or agent.get("fallback"):
        return None
    keys: set[str] = set()
    configs = [agent.get("config") or {}] + [
        {**(agent.get("config") or {}), **(v.get("config") or {})} for v in agent.get("versions") or []
    ]
    for config in configs:
        output = config.get("output")
        if "output" not in config:
            keys |= SIMULATED_DEFAULT_OUTPUT
        elif isinstance(output, dict):
            keys |= {str(k) for k in output}
        else:
            return None  # a template such as "{{ input }}": its shape is the run's
    return frozenset(keys)


# What an agent's own templates read (agents/llm.py, agents/simulated.py). Their `input` is the
# step's input as rendered, not the run's.
AGENT_TEMPLATE_CONTEXT: dict[str, dict[str, tuple[str, ...]]] = {
    "llm": {"prompt": ("input",), "system": ("input",)},
    "simulated": {"output": ("input", "attempt", "iteration", "item", "index", "agent")},
}


class AgentTemplate(NamedTuple):
    field: str  # as the file names it: "config.prompt", "versions.concise.config.prompt"
    value: Any
    roots: tuple[str, ...]


def agent_templates(agent: Mapping[str, Any]) -> list[AgentTemplate]:
    """The agent's templated config fields, its versions' own included."""
    fields = AGENT_TEMPLATE_CONTEXT.get(str(agent.get("kind")), {})
    found: list[AgentTemplate] = []
    configs = [("config", agent.get("config") or {})] + [
        (f"versions.{v.get('label', '?')}.config", v.get("config") or {}) for v in agent.get("versions") or []
    ]
    for prefix, config in configs:
        if isinstance(config, dict):
            found += [AgentTemplate(f"{prefix}.{name}", config[name], roots) for name, roots in fields.items() if name in config]
    return found


def check_agent_template_names(kind: str, config: dict[str, Any], where: str, problems: Problems) -> None:
    """An agent's templates may read only what its kind renders them with."""
    for name, roots in AGENT_TEMPLATE_CONTEXT.get(kind, {}).items():
        if name not in config:
            continue
        for path in name_paths(_trees(config[name], False)):
            if path[0] not in roots:
                problems.add(
                    where,
                    f"field `config.{name}`: `{path[0]}` is not something this template can read "
                    f"(it can read {_listed(roots)}){_did_you_mean(path[0], roots)}",
                )


def _input_keys(step: StepSpec, spec: WorkflowSpec) -> frozenset[str] | None:
    """The keys of the input an agent step hands its agent, when they are known before it runs
    (engine.default_input): a literal mapping's, the run's declared inputs for a first step,
    the keys of the steps it comes after otherwise."""
    if "input" in step:
        value = step["input"]
        return frozenset(str(k) for k in value) if isinstance(value, dict) else None
    if step.get("for_each"):
        return None  # each item is the input
    if not step["after"]:
        return frozenset(spec["inputs"]) if spec["inputs"] else None
    return frozenset(step["after"])


def _check_agent_inputs(step: StepSpec, spec: WorkflowSpec, catalog: Catalog, at: str, problems: Problems) -> None:
    """The step's agent (and its fallback) may read only keys the step's input has."""
    keys = _input_keys(step, spec) if step["kind"] == "agent" else None
    if keys is None:
        return
    for name in dict.fromkeys(n for n in (*step_agents(step), step.get("fallback")) if n):
        said: set[str] = set()
        for template in catalog.templates.get(name, []):
            for path in name_paths(_trees(template.value, False)):
                if path[0] != "input" or len(path) < 2 or path[1] in keys or hasattr(dict, path[1]):
                    continue
                problem = (
                    f"agent '{name}', field `{template.field}`: `{'.'.join(path)}` is not in the step's input "
                    f"(input: {_listed(keys)}){_did_you_mean(path[1], keys, path[:1])}"
                )
                if problem not in said:
                    said.add(problem)
                    problems.add(at, problem)


def _did_you_mean(name: str, choices: Iterable[str], before: tuple[str, ...] = ()) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean `{'.'.join((*before, close[0]))}`?" if close else ""


def _listed(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "none"


def _output_keys(step: StepSpec, spec: WorkflowSpec, catalog: Catalog) -> frozenset[str] | None:
    """The keys of the step's output when they are known before it runs, else None."""
    if step["kind"] != "agent" or step.get("for_each") or step.get("fallback"):
        return None  # a map gives a list; a fallback agent gives its own shape
    if step.get("on_failure", spec["on_failure"]) == "escalate":
        return None  # the owner may skip the step with an output of their choosing
    return catalog.outputs.get(step.get("agent", ""))


def _path_problem(
    path: tuple[str, ...], roots: tuple[str, ...], spec: WorkflowSpec, outputs: Mapping[str, frozenset[str] | None]
) -> str | None:
    """What is wrong with one name a template reads, or None when it may be there at run time."""
    written = ".".join(path)
    root = path[0]
    if root not in roots:
        return f"`{root}` is not something this template can read (it can read {_listed(roots)}){_did_you_mean(root, roots)}"
    if len(path) < 2 or hasattr(dict, path[1]):
        return None  # `input.get('x')`, `steps.items()`: dict methods, as the sandbox allows
    if root == "input" and spec["inputs"] and path[1] not in spec["inputs"]:
        names = spec["inputs"]
        return f"`{written}` is not an input (inputs: {_listed(names)}){_did_you_mean(path[1], names, path[:1])}"
    if root == "run" and path[1] not in RUN_FIELDS:
        return f"`{written}`: a run has {_listed(RUN_FIELDS)}{_did_you_mean(path[1], RUN_FIELDS, path[:1])}"
    if root != "steps" or len(path) < 3 or path[1] not in outputs:
        return None  # unknown steps and their order are _check_graph's to name
    step_key, part = path[1], path[2]
    routes = {s["key"] for s in spec["steps"] if s["kind"] == "route"}
    fields = ROUTE_RESULT_FIELDS if step_key in routes else STEP_RESULT_FIELDS
    if part not in fields and not hasattr(dict, part):
        return (
            f"`{written}`: a step has {_listed(fields)}, not `{part}`"
            f"{_did_you_mean(part, fields, path[:2])}"
        )
    keys = outputs[step_key]
    if part == "output" and len(path) > 3 and keys is not None and path[3] not in keys and not hasattr(dict, path[3]):
        return (
            f"`{written}` is not in the output of step `{step_key}` (output: {_listed(keys)})"
            f"{_did_you_mean(path[3], keys, path[:3])}"
        )
    return None


def _template_fields(step: StepSpec) -> list[tuple[str, Any, tuple[str, ...]]]:
    """Each templated field of a step: its name in the file, its value, the names it may read."""
    fields: list[tuple[str, Any, tuple[str, ...]]] = []
    per_item = MAP_CONTEXT if step.get("for_each") else STEP_CONTEXT
    if "input" in step:
        fields.append(("input", step["input"], per_item))
    for name in ("agent", "workflow"):
        if chosen_at_run_time(step.get(name)):
            fields.append((name, step.get(name), per_item))
    for name in ("when", "for_each"):
        if step.get(name):
            fields.append((name, step.get(name), STEP_CONTEXT))
    if step.get("item_key"):
        fields.append(("item_key", step.get("item_key"), MAP_CONTEXT))
    if "loop" in step:
        fields.append(("loop.until", step["loop"]["until"], STEP_CONTEXT))
        if "redo" in step["loop"]:
            fields.append(("loop.redo", step["loop"]["redo"], STEP_CONTEXT))
    if "route" in step:
        fields.append(("route.by", step["route"]["by"], STEP_CONTEXT))
    if "end" in step:
        fields.append(("end", {k: v for k, v in step["end"].items() if k != "status"}, STEP_CONTEXT))
    if "gate" in step:
        fields.append(("gate", step["gate"], STEP_CONTEXT))
    if step["kind"] in ("approval", "manual", "wait"):
        fields.append((step["kind"], step.get(step["kind"]), STEP_CONTEXT))
    if "input" in step.get("compensate", {}):
        fields.append(("compensate.input", step["compensate"]["input"], COMPENSATE_CONTEXT))
    return fields


EXPRESSION_FIELDS = ("when", "for_each", "item_key", "loop.until", "loop.redo", "route.by", "agent", "workflow")


def _trees(value: Any, expression: bool) -> list[Any]:
    try:
        return [check_expression(value)] if expression else check_template(value)
    except TemplateError:
        return []  # already reported where the field was read


def check_template_names(spec: WorkflowSpec, catalog: Catalog, where: str, problems: Problems) -> None:
    """Refuse a template that reads a name its context will never have: a root name the
    context lacks, an input the workflow does not declare, a field a step result or a run does
    not have, or a key missing from a step output whose shape is known (known_output_keys).
    Where the shape is not known, anything is allowed. Which steps exist and come earlier is
    _check_graph's part."""
    outputs = {s["key"]: _output_keys(s, spec, catalog) for s in spec["steps"]}
    checks: list[tuple[str, str, Any, tuple[str, ...], bool]] = []
    for step in spec["steps"]:
        at = f"{where}, step '{step['key']}'"
        for name, value, roots in _template_fields(step):
            checks.append((at, name, value, roots, name in EXPRESSION_FIELDS))
        _check_agent_inputs(step, spec, catalog, at, problems)
    if spec["output"] is not None:
        checks.append((where, "output", spec["output"], STEP_CONTEXT, False))
    for at, name, value, roots, expression in checks:
        said: set[str] = set()
        for path in name_paths(_trees(value, expression)):
            problem = _path_problem(path, roots, spec, outputs)
            if problem is not None and problem not in said:
                said.add(problem)
                problems.add(at, f"field `{name}`: {problem}")


# ---------------------------------------------------------------------------------------------
# The whole document, and writing it back


def validate_document(document: dict[str, Any], catalog: Catalog) -> tuple[list[AgentSpec], WorkflowSpec | None]:
    problems = Problems()
    for unknown in sorted(set(document) - DOCUMENT_FIELDS):
        problems.add("file", f"unknown top-level field `{unknown}`")
    agents: list[AgentSpec] = []
    raw_agents = document.get("agents") or []
    if not isinstance(raw_agents, list):
        problems.add("file", "field `agents` must be a list")
        raw_agents = []
    names: set[str] = set()
    for index, raw in enumerate(raw_agents):
        agent = normalise_agent(raw, f"agents #{index + 1}", problems)
        if agent is None:
            continue
        if agent["name"] in names:
            problems.add(f"agent '{agent['name']}'", "defined twice")
        names.add(agent["name"])
        agents.append(agent)
    for agent in agents:
        if agent["fallback"] and agent["fallback"] not in catalog.agents | names:
            problems.add(f"agent '{agent['name']}'", f"field `fallback`: unknown agent {agent['fallback']!r}")
    workflow = None
    if "workflow" in document:
        outputs = dict(catalog.outputs)
        templates = dict(catalog.templates)
        for agent in agents:
            # The file's agents replace the saved ones of the same name once it is imported.
            outputs.pop(agent["name"], None)
            keys = known_output_keys(agent)
            if keys is not None:
                outputs[agent["name"]] = keys
            templates[agent["name"]] = agent_templates(agent)
        local = Catalog(
            agents=catalog.agents | names,
            workflows=catalog.workflows,
            users=catalog.users,
            groups=catalog.groups,
            outputs=outputs,
            templates=templates,
        )
        try:
            workflow = normalise_workflow(document["workflow"], local)
        except SpecError as exc:
            problems.items.extend(exc.problems)
    elif not agents:
        problems.add("file", "has neither `workflow` nor `agents`")
    problems.raise_if_any()
    return agents, workflow


def agent_to_file(agent: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": agent["name"], "kind": agent["kind"]}
    if agent.get("description"):
        out["description"] = agent["description"]
    if agent.get("config"):
        out["config"] = agent["config"]
    if agent.get("timeout") is not None:
        out["timeout"] = format_duration(agent["timeout"])
    if agent.get("retry"):
        out["retry"] = retry_to_file(agent["retry"])
    if agent.get("fallback"):
        out["fallback"] = agent["fallback"]
    if agent.get("circuit"):
        circuit = dict(agent["circuit"])
        for name in ("window", "cooldown"):
            if circuit.get(name) is not None:
                circuit[name] = format_duration(circuit[name])
        out["circuit"] = circuit
    if agent.get("max_concurrency"):
        out["max_concurrency"] = agent["max_concurrency"]
    if agent.get("risk", "low") != "low":
        out["risk"] = agent["risk"]
    if agent.get("versions"):
        out["versions"] = [_version_to_file(v) for v in agent["versions"]]
    return out


def _version_to_file(version: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"label": version["label"]}
    if version.get("config"):
        out["config"] = version["config"]
    out["weight"] = version.get("weight", 0)
    if version.get("note"):
        out["note"] = version["note"]
    return out


TRIGGER_KINDS = ("cron", "webhook", "event")
CRON_FIELDS = {"cron", "timezone", "catch_up", "input"}
MAX_TRIGGERS = 20
MAX_CATCH_UP = 10
# What each trigger's `input` template may name.
TRIGGER_CONTEXT = {"cron": {"slot"}, "webhook": {"body"}, "event": {"event"}}
_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,99}")
_EVENT_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,99}")


def normalise_triggers(raw: Any, where: str, problems: Problems) -> list[TriggerSpec]:
    """`triggers:` — a list of `{cron: ...}`, `{webhook: {secret_env: ...}}` or `{event: name}`."""
    if raw is None or raw == []:
        return []
    if not isinstance(raw, list):
        problems.add(where, "field `triggers` must be a list of {cron: ...}, {webhook: ...} or {event: ...}")
        return []
    if len(raw) > MAX_TRIGGERS:
        problems.add(where, f"field `triggers`: {len(raw)} triggers; at most {MAX_TRIGGERS} are allowed")
        return []
    triggers: list[TriggerSpec] = []
    for index, item in enumerate(raw):
        at = f"{where}, trigger {index + 1}"
        if not isinstance(item, dict):
            problems.add(at, "must be a mapping with one of `cron`, `webhook` or `event`")
            continue
        kinds = [kind for kind in TRIGGER_KINDS if kind in item]
        if len(kinds) != 1:
            problems.add(at, "needs exactly one of `cron`, `webhook` or `event`")
            continue
        kind = kinds[0]
        allowed = CRON_FIELDS if kind == "cron" else {kind, "input"}
        for unknown in sorted(set(item) - allowed, key=str):
            problems.add(at, f"unknown field `{unknown}` (a {kind} trigger takes {', '.join(f'`{f}`' for f in sorted(allowed))})")
        trigger: TriggerSpec = {}
        if kind == "cron":
            _normalise_cron(item, at, problems, trigger)
        elif kind == "webhook":
            options = item["webhook"]
            secret_env = options.get("secret_env") if isinstance(options, dict) else None
            if not isinstance(options, dict) or set(options) != {"secret_env"}:
                problems.add(at, "field `webhook` must be {secret_env: NAME_OF_AN_ENVIRONMENT_VARIABLE}")
            elif not isinstance(secret_env, str) or not _ENV_NAME.fullmatch(secret_env):
                problems.add(at, f"field `webhook.secret_env`: {secret_env!r} is not an environment variable name (A-Z, 0-9, _)")
            else:
                trigger["webhook"] = {"secret_env": secret_env}
        else:
            name = item["event"]
            if not isinstance(name, str) or not _EVENT_NAME.fullmatch(name):
                problems.add(at, f"field `event`: {name!r} is not an event name (lower-case letters, digits, `.`, `_`, `-`; at most 100)")
            else:
                trigger["event"] = name
        if "input" in item:
            trees = _check_templates(item["input"], at, "input", problems)
            for name in sorted(_root_names(trees) - TRIGGER_CONTEXT[kind]):
                names = ", ".join(f"`{n}`" for n in sorted(TRIGGER_CONTEXT[kind]))
                problems.add(at, f"field `input`: `{name}` is not known to a {kind} trigger (it may use {names})")
            trigger["input"] = item["input"]
        triggers.append(trigger)
    if sum("webhook" in t for t in triggers) > 1:
        problems.add(where, "field `triggers`: one webhook per workflow (it is POST /hooks/<workflow key>)")
    return triggers


def _normalise_cron(item: Mapping[str, Any], at: str, problems: Problems, trigger: TriggerSpec) -> None:
    from croniter import croniter

    expression = item["cron"]
    if not isinstance(expression, str) or len(expression) > 200 or not croniter.is_valid(expression):
        problems.add(at, f"field `cron`: {expression!r} is not a cron expression (five fields, e.g. \"0 9 * * 1-5\")")
    elif len(expression.split()) != 5:
        problems.add(at, f"field `cron`: {expression!r} has {len(expression.split())} fields; use the five of minute hour day month weekday")
    else:
        trigger["cron"] = expression
    if "timezone" in item:
        zone = item["timezone"]
        if not isinstance(zone, str) or not _known_zone(zone):
            problems.add(at, f"field `timezone`: {zone!r} is not a time zone name (e.g. Europe/Paris)")
        else:
            trigger["timezone"] = zone
    if "catch_up" in item:
        catch_up = item["catch_up"]
        if isinstance(catch_up, bool) or not isinstance(catch_up, int) or not 0 <= catch_up <= MAX_CATCH_UP:
            problems.add(at, f"field `catch_up`: {catch_up!r} is not a whole number from 0 to {MAX_CATCH_UP}")
        else:
            trigger["catch_up"] = catch_up


def _known_zone(name: str) -> bool:
    import zoneinfo

    if len(name) > 60:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _root_names(trees: list[Any]) -> set[str]:
    """The top-level names a template reads (`body` in `{{ body.id }}`), minus those it sets."""
    from jinja2 import nodes

    names: set[str] = set()
    for tree in trees:
        stored = {node.name for node in tree.find_all(nodes.Name) if node.ctx in ("store", "param")}
        names |= {node.name for node in tree.find_all(nodes.Name) if node.ctx == "load"} - stored
    return names - set(environment().globals)


def retry_to_file(retry: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(retry)
    for name in ("backoff", "max_backoff"):
        if name in out:
            out[name] = format_duration(out[name])
    return out


def workflow_to_file(spec: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"key": spec["key"], "name": spec["name"]}
    if spec.get("description"):
        out["description"] = spec["description"]
    if spec.get("owner"):
        out["owner"] = spec["owner"]
    if spec.get("inputs"):
        out["inputs"] = spec["inputs"]
    if spec.get("output") is not None:
        out["output"] = spec["output"]
    if spec.get("on_cancel", "nothing") != "nothing":
        out["on_cancel"] = spec["on_cancel"]
    if spec.get("on_failure", "fail") != "fail":
        out["on_failure"] = spec["on_failure"]
    if spec.get("allow_self_approval"):
        out["allow_self_approval"] = True
    if spec.get("access"):
        out["access"] = spec["access"]
    if spec.get("triggers"):
        out["triggers"] = spec["triggers"]
    steps = []
    for step in spec["steps"]:
        item: dict[str, Any] = {"key": step["key"]}
        for name in ("name", "description"):
            if step.get(name):
                item[name] = step[name]
        item[step["kind"]] = step[step["kind"]]
        if step.get("after"):
            item["after"] = step["after"]
        for name in ("agents", "workflows", "input", "when", "for_each", "concurrency", "item_key", "loop", "fallback", "gate", "on_failure"):
            if name in step:
                item[name] = step[name]
        if step.get("compensate"):
            compensate = dict(step["compensate"])
            if compensate.get("retry"):
                compensate["retry"] = retry_to_file(compensate["retry"])
            item["compensate"] = compensate
        if step.get("timeout") is not None:
            item["timeout"] = format_duration(step["timeout"])
        if step.get("retry"):
            item["retry"] = retry_to_file(step["retry"])
        steps.append(item)
    out["steps"] = steps
    return out


def dump_document(agents: list[Mapping[str, Any]], spec: Mapping[str, Any], *, as_json: bool = False) -> str:
    document: dict[str, Any] = {}
    if agents:
        document["agents"] = [agent_to_file(a) for a in agents]
    document["workflow"] = workflow_to_file(spec)
    if as_json:
        return json.dumps(document, indent=2) + "\n"
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)
