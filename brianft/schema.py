"""The intent contract (shared/INTENT_SCHEMA.md) as typed models.

Everything that crosses a module boundary (data files, model output, API answers) is an
`Intent`: an action plus string fields in canonical form. This module only describes the
shape; turning raw values into canonical ones is `brianft.normalize`.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = "1.0"


class Action(StrEnum):
    SWAP = "swap"
    BRIDGE = "bridge"
    TRANSFER = "transfer"
    BALANCE = "balance"
    APPROVE = "approve"
    WRAP = "wrap"
    UNWRAP = "unwrap"
    DEPOSIT = "deposit"
    WITHDRAW = "withdraw"
    BORROW = "borrow"
    REPAY = "repay"
    STAKE = "stake"
    UNSTAKE = "unstake"
    TOTAL_SUPPLY = "total_supply"


# Field order is the order of the schema file; serialisation follows it so that data files,
# model targets and API answers always list fields the same way.
FIELDS: tuple[str, ...] = (
    "token1",
    "token2",
    "amount",
    "amount_out",
    "chain",
    "dest_chain",
    "address",
    "protocol",
)

_LENDING = frozenset({"token1", "amount", "protocol", "chain"})

ALLOWED_FIELDS: dict[Action, frozenset[str]] = {
    Action.SWAP: frozenset({"token1", "token2", "amount", "amount_out", "chain"}),
    Action.BRIDGE: frozenset({"token1", "token2", "amount", "chain", "dest_chain"}),
    Action.TRANSFER: frozenset({"token1", "amount", "address", "chain"}),
    Action.BALANCE: frozenset({"token1", "address", "chain"}),
    Action.APPROVE: frozenset({"token1", "amount", "address", "protocol", "chain"}),
    Action.WRAP: frozenset({"token1", "amount", "chain"}),
    Action.UNWRAP: frozenset({"token1", "amount", "chain"}),
    Action.DEPOSIT: _LENDING,
    Action.WITHDRAW: _LENDING,
    Action.BORROW: _LENDING,
    Action.REPAY: _LENDING,
    Action.STAKE: _LENDING,
    Action.UNSTAKE: _LENDING,
    Action.TOTAL_SUPPLY: frozenset({"token1", "chain"}),
}

# Each requirement is a tuple of alternatives: any one of them satisfies it.
REQUIRED_FIELDS: dict[Action, tuple[tuple[str, ...], ...]] = {
    Action.SWAP: (("token1",), ("token2",), ("amount", "amount_out")),
    Action.BRIDGE: (("token1",), ("amount",), ("dest_chain",)),
    Action.TRANSFER: (("token1",), ("amount",), ("address",)),
    Action.BALANCE: (),
    Action.APPROVE: (("token1",), ("amount",), ("address", "protocol")),
    Action.WRAP: (("amount",),),
    Action.UNWRAP: (("amount",),),
    Action.DEPOSIT: (("token1",), ("amount",)),
    Action.WITHDRAW: (("token1",), ("amount",)),
    Action.BORROW: (("token1",), ("amount",)),
    Action.REPAY: (("token1",), ("amount",)),
    Action.STAKE: (("token1",), ("amount",)),
    Action.UNSTAKE: (("token1",), ("amount",)),
    Action.TOTAL_SUPPLY: (("token1",),),
}


class Intent(BaseModel):
    """One action with its fields in canonical form. Absent fields are None, never defaulted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Action
    token1: str | None = None
    token2: str | None = None
    amount: str | None = None
    amount_out: str | None = None
    chain: str | None = None
    dest_chain: str | None = None
    address: str | None = None
    protocol: str | None = None

    @field_validator(*FIELDS)
    @classmethod
    def _non_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("a field is either absent or a non-empty string")
        return value

    def fields(self) -> dict[str, str]:
        """The fields that are set, in schema order (without the action)."""
        return {name: getattr(self, name) for name in FIELDS if getattr(self, name) is not None}

    def to_dict(self) -> dict[str, str]:
        return {"action": self.action.value, **self.fields()}

    def disallowed_fields(self) -> list[str]:
        return [name for name in self.fields() if name not in ALLOWED_FIELDS[self.action]]

    def missing(self) -> list[str]:
        """Required fields this intent lacks; for an either/or requirement, the first alternative."""
        present = self.fields()
        return [alts[0] for alts in REQUIRED_FIELDS[self.action] if not any(a in present for a in alts)]


class Example(BaseModel):
    """One labelled request. `raw` holds, per intent, the values as written in the prompt."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1)
    intents: list[Intent]
    raw: list[dict[str, str]] | None = None
    source: str | None = None
    family: str | None = None

    def to_dict(self) -> dict:
        out: dict = {"prompt": self.prompt, "intents": [i.to_dict() for i in self.intents]}
        if self.raw is not None:
            out["raw"] = self.raw
        if self.source is not None:
            out["source"] = self.source
        if self.family is not None:
            out["family"] = self.family
        return out
