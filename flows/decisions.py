"""Approval decisions a run takes: checked against the approval's form, and believed only as
far as they are signed.

Anyone who can write to the Prefect API can write a run's inputs, and so a decision
(``fm-decision-<slug>``), a recorded outcome (``fm-result-<slug>``) or an answer to its
Prefect pause. So the run (``flows/approvals.py``) takes none of them as they are:

- every decision's input is validated strictly against the approval's stored form
  (``approved`` and every required field present, no unknown field, exact types); one that
  does not fit is refused and the approval keeps waiting;
- a decision is *verified* when it carries an HMAC-SHA256 signature, over the run id, the
  approval's slug and the whole decision (outcome, input, decided_at, decided_by, via),
  under the decision key: a key FlowMaestro's API (and CLI) and its workers share, and that
  is in no Prefect parameter, input or variable. The API signs the decisions it writes;
  a worker signs the outcome it records, so a run executed again trusts it;
- anything else (Prefect UI's Resume form, a write through Prefect's API, a decision whose
  signature does not verify) is *unverified*: taken only when the operator allows answers
  through Prefect (``FLOWMAESTRO_APPROVAL_PREFECT_UI``, on by default), and then recorded
  as ``via: "prefect-ui"`` with no ``decided_by``, never what it claims; an unverified
  timeout is never taken.

The decision key is ``FLOWMAESTRO_DECISION_KEY`` when set, else derived (HMAC-SHA256) from
the key that encrypts webhook secrets (``FLOWMAESTRO_SECRET_KEY`` or the key file under
home); ``flowmaestro serve`` hands the derived key to its workers, not the secret key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from node_handlers.approval import ApprovalConfig, form_model
from store.secrets import KEY_FILE, SecretBox

VERSION = "v1"
_LABEL = b"flowmaestro approval decisions v1"
PREFECT_UI = "prefect-ui"
"""The ``via`` of every unverified decision."""


def decision_key_text(decision_key: SecretStr | None, secret_key: SecretStr | None, home: Path) -> str:
    """The decision key as text, from settings: ``decision_key`` as given, else derived from
    the secret key (or the key file under ``home``, created on first use) so that the derived
    key reveals nothing of it."""
    if decision_key is not None and decision_key.get_secret_value():
        return decision_key.get_secret_value()
    secret = secret_key.get_secret_value() if secret_key is not None else None
    SecretBox.from_settings(secret, home)  # creates the key file on first use
    material = secret.encode() if secret else (home / KEY_FILE).read_bytes().strip()
    return base64.urlsafe_b64encode(hmac.new(material, _LABEL, hashlib.sha256).digest()).decode()


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class DecisionSigner:
    key: bytes = field(repr=False)

    @classmethod
    def from_settings(cls, decision_key: SecretStr | None, secret_key: SecretStr | None, home: Path) -> DecisionSigner:
        return cls(decision_key_text(decision_key, secret_key, home).encode())

    def _mac(self, run_id: str, slug: str, decision: dict[str, Any]) -> str:
        unsigned = {k: v for k, v in decision.items() if k != "signature"}
        message = json.dumps(
            {"run": str(run_id), "slug": slug, "decision": unsigned},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
        )
        return f"{VERSION}:" + hmac.new(self.key, message.encode(), hashlib.sha256).hexdigest()

    def sign(self, run_id: str, slug: str, decision: dict[str, Any]) -> dict[str, Any]:
        return {**decision, "signature": self._mac(run_id, slug, decision)}

    def verifies(self, run_id: str, slug: str, decision: dict[str, Any]) -> bool:
        signature = decision.get("signature")
        return isinstance(signature, str) and hmac.compare_digest(signature, self._mac(run_id, slug, decision))


@dataclass(frozen=True)
class Taken:
    """A decision the run takes, as recorded: ``decided_by``/``via`` only when verified."""

    decision: dict[str, Any]


@dataclass(frozen=True)
class Refused:
    """Why a decision is not taken; says nothing of the values it carried."""

    reason: str


def form_issues(config: ApprovalConfig, values: Any) -> str | None:
    """What is wrong with ``values`` for the approval's form (strictly), or None."""
    if not isinstance(values, dict):
        return "its input is not an object"
    try:
        form_model(config.form, config.message).model_validate(values, strict=True)
    except ValidationError as exc:
        return "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
    return None


def take(
    raw: Any, config: ApprovalConfig, *, run_id: str, slug: str, signer: DecisionSigner, allow_unverified: bool
) -> Taken | Refused:
    """Whether the run takes the decision ``raw`` (read from an input or a Prefect answer)
    for the approval ``slug``, and as what."""
    if not isinstance(raw, dict):
        return Refused("not a decision object")
    verified = signer.verifies(run_id, slug, raw)
    outcome = raw.get("outcome")
    if outcome == "timeout":
        if not verified:
            return Refused("an unsigned timeout (only the run itself times an approval out)")
        return Taken({"outcome": "timeout", "decided_at": raw.get("decided_at") or _now(), "via": "timeout"})
    if outcome != "decided":
        return Refused("its outcome is neither 'decided' nor 'timeout'")
    if not verified and not allow_unverified:
        return Refused("it is not signed by FlowMaestro's API and FLOWMAESTRO_APPROVAL_PREFECT_UI is off")
    if not verified and config.organisational:
        # Who decides, how many must, and whether the run's starter may are checked by the
        # API (api/approval_desk.py): an answer through Prefect checked none of it.
        return Refused("it is not signed by FlowMaestro's API and the approval names its approvers")
    issues = form_issues(config, raw.get("input"))
    if issues is not None:
        return Refused(f"it does not fit the form ({issues})")
    if verified:
        return Taken(
            {
                "outcome": "decided",
                "input": raw["input"],
                "decided_at": raw.get("decided_at") or _now(),
                "decided_by": raw.get("decided_by"),
                "via": raw.get("via"),
            }
            | ({"decisions": raw["decisions"]} if isinstance(raw.get("decisions"), list) else {})
        )
    return Taken(
        {"outcome": "decided", "input": raw["input"], "decided_at": _now(), "decided_by": None, "via": PREFECT_UI}
    )
