"""The approval node: a person decides, through a form.

The handler describes the form and asks the engine to pause for a person
(``NodeCapabilities.pause_for_person``); the pause itself is the run's approval gate
(``flows/approvals.py``), because it needs Prefect's ``pause_flow_run``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    TypeAdapter,
    WithJsonSchema,
    create_model,
    field_validator,
)

from builder.catalog import IDENTIFIER_PATTERN, NodeConfig
from builder.json_types import JsonType
from node_handlers.base import ERROR_HANDLE, Completed, HandleDoc, NodeContext, NodeHandler


class FormField(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: JsonType = "string"
    description: str | None = None
    required: bool = False
    default: Any = None
    enum: list[Any] | None = None


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"
"""An identity (an API key's owner name) or a group's name."""


class Approvers(BaseModel):
    """Who may decide an approval: identities (the owner names of API keys) and groups of the
    run owner's (``/api/groups``), members at the time of the decision."""

    model_config = ConfigDict(extra="forbid")
    users: list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]] = Field(default_factory=list)
    groups: list[Annotated[str, StringConstraints(pattern=NAME_PATTERN)]] = Field(default_factory=list)


_NAMES = {"type": "array", "items": {"type": "string", "pattern": NAME_PATTERN}}
ApproversField = Annotated[
    Approvers,
    # The published schema says both forms a canvas may hold: the object, or a plain list of users.
    WithJsonSchema(
        {
            "anyOf": [
                _NAMES,
                {
                    "type": "object",
                    "properties": {"users": _NAMES, "groups": _NAMES},
                    "additionalProperties": False,
                },
            ]
        }
    ),
]


class WebhookNotify(BaseModel):
    """A POST of a Slack-compatible JSON body, signed as FlowMaestro's webhooks are."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["webhook"]
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2000)]


class EmailNotify(BaseModel):
    """An email through ``FLOWMAESTRO_SMTP_URL``."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["email"]
    to: list[Annotated[str, StringConstraints(pattern=r"^[^@\s,<>]+@[^@\s,<>]+$", max_length=320)]] = Field(
        min_length=1, max_length=50
    )

    @field_validator("to", mode="before")
    @classmethod
    def _one_address(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


Notify = Annotated[WebhookNotify | EmailNotify, Field(discriminator="type")]


class ApprovalConfig(NodeConfig):
    message: str | None = Field(None, description="Shown to the approver; a template.")
    form: dict[str, FormField] = Field(
        default_factory=dict,
        description="Extra fields the approver fills in.",
        json_schema_extra={"propertyNames": {"pattern": IDENTIFIER_PATTERN, "not": {"const": "approved"}}},
    )
    timeout_s: float | None = Field(None, gt=0, description="After this, the timeout handle fires.")
    approvers: ApproversField = Field(
        default_factory=lambda: Approvers(),
        description="Who may decide: {users, groups} (a plain list names users). None: the run's owner.",
    )
    required: int = Field(1, ge=1, le=100, description="Approvals needed; the first rejection rejects.")
    allow_self_approval: bool = Field(True, description="False: whoever started the run may not decide.")
    notify: list[Notify] = Field(
        default_factory=list,
        max_length=10,
        description="Where to tell approvers: [{type: webhook, url}, {type: email, to}], each with a decision link.",
    )
    remind_every_s: float | None = Field(None, ge=1, description="Notify again this often while it waits.")
    escalate_after_s: float | None = Field(None, ge=1, description="After this, escalate_to may decide too, notified.")
    escalate_to: ApproversField = Field(
        default_factory=lambda: Approvers(), description="Who is added after escalate_after_s: {users, groups}."
    )

    @field_validator("approvers", "escalate_to", mode="before")
    @classmethod
    def _plain_list(cls, value: Any) -> Any:
        # A plain list of names is the node's older form: users.
        return {"users": value} if isinstance(value, list) else value

    @property
    def organisational(self) -> bool:
        """Whether anyone but the run's owner decides, or more than one must, or the owner may
        not: then only decisions the API signed are taken (it checks who decides)."""
        named = self.approvers.users or self.approvers.groups or self.escalate_to.users or self.escalate_to.groups
        return bool(named) or self.required > 1 or not self.allow_self_approval

    @field_validator("form")
    @classmethod
    def _field_names(cls, form: dict[str, FormField]) -> dict[str, FormField]:
        for name in form:
            if name == "approved":
                raise ValueError("'approved' is always part of the form; do not declare it")
            if not name.isidentifier():
                raise ValueError(f"form field {name!r} must be a valid identifier")
        return form


class ToolCallApproval(ApprovalConfig):
    """What an agent node asks a person before one of its tool calls runs
    (``NodeCapabilities.pause_for_person``): the call, shown with the approval, and the step
    it belongs to (one node execution may ask several times: each is an approval of its own)."""

    step: str
    kind: Literal["tool_call"] = "tool_call"
    tool: str
    arguments: dict[str, Any] = Field(default_factory=dict)


class ApprovalHandler(NodeHandler):
    type = "approval"
    category = "human"
    side_effects = True  # waits for a person, whose decision is recorded
    handle_docs = (
        HandleDoc("approved", "Fires when a person approved; the output is {approved, input, decided_at}."),
        HandleDoc("rejected", "Fires when a person rejected."),
        HandleDoc("timeout", "Fires when no one decided within data.timeout_s."),
        ERROR_HANDLE,
    )
    description = "Pauses the run until a person approves or rejects, or the timeout passes."
    Config = ApprovalConfig
    cacheable = False
    in_flow = True

    def handles(self, config: NodeConfig) -> frozenset[str]:
        return frozenset({"approved", "rejected", "timeout", "error"})

    async def run(self, config: ApprovalConfig, ctx: NodeContext) -> Completed:
        return await ctx.capabilities.pause_for_person(config)


HANDLERS = [ApprovalHandler]


# Booleans are strict: a decision of "yes", "on" or 1 is not an approval (pydantic's lax
# mode would read them as true); only JSON true and false are.
_PY_TYPES: dict[JsonType, Any] = {
    "string": str,
    "number": float,
    "integer": int,
    "boolean": StrictBool,
    "object": dict,
    "array": list,
}


class FormAnswer(BaseModel):
    """An answer has the form's fields and no others (Prefect's ``RunInput`` forbids extras too)."""

    model_config = ConfigDict(extra="forbid")


def form_model(form: dict[str, Any], message: str | None = None, base: type[BaseModel] = FormAnswer) -> type[BaseModel]:
    """The model of an approval's form: ``approved`` plus the declared fields.

    The same model validates a decision sent to the API, every decision the run takes
    (strictly, ``flows/decisions.py``) and, as a Prefect ``RunInput`` (``base``), renders the
    Resume form in the Prefect UI, so all refuse the same input.
    """
    fields: dict[str, Any] = {"approved": (StrictBool, Field(description="Approve (true) or reject (false)."))}
    for name, raw in form.items():
        spec = raw if isinstance(raw, FormField) else FormField.model_validate(raw)
        annotation: Any = _PY_TYPES[spec.type]
        if spec.enum:
            annotation = Literal[tuple(spec.enum)]  # type: ignore[valid-type]
        if spec.required:
            fields[name] = (annotation, Field(description=spec.description))
        else:
            # Published as the field's own type: the Prefect UI draws "str | None" as a toggle
            # between a string and null, where the approver expects a field to leave empty.
            # Validation is unchanged: the field may be left out, or null.
            shown = WithJsonSchema(TypeAdapter(annotation).json_schema())
            fields[name] = (Annotated[annotation | None, shown], Field(spec.default, description=spec.description))
    built = create_model("ApprovalForm", __base__=base, **fields)
    describe = getattr(built, "with_initial_data", None)
    # A Prefect RunInput: its Resume form shows this description (markdown) above the
    # fields; the schema's own description it does not show.
    model: type[BaseModel] = describe(description=message) if message and describe is not None else built
    model.__doc__ = message or "Approve or reject to continue the run."
    return model
