"""``/security-groups``: per-project allow rules applied to instance interfaces."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import APIRouter, Response
from sqlalchemy.orm import Session

from stratuslab.api.deps import CtxDep, PrincipalDep
from stratuslab.db import models
from stratuslab.schemas.networks import (
    SecurityGroup,
    SecurityGroupCreate,
    SecurityRule,
    SecurityRuleCreate,
)
from stratuslab.services import secgroups

router = APIRouter(prefix="/security-groups", tags=["security groups"])


def to_wire(session: Session, groups: Sequence[models.SecurityGroup]) -> list[SecurityGroup]:
    ids = [g.id for g in groups]
    rules = secgroups.rules_of(session, ids)
    remote_ids = {r.remote_group_id for rs in rules.values() for r in rs if r.remote_group_id}
    names = {g.id: g.name for g in groups}
    for gid in remote_ids - set(names):
        other = session.get(models.SecurityGroup, gid)
        names[str(gid)] = other.name if other is not None else str(gid)
    used = secgroups.nic_count(session, ids)
    return [
        SecurityGroup(
            id=g.id,
            name=g.name,
            description=g.description,
            project_id=g.project_id,
            created_at=g.created_at,
            rules=[rule_wire(r, names) for r in rules.get(g.id, [])],
            nics=used.get(g.id, 0),
        )
        for g in groups
    ]


def rule_wire(rule: models.SecurityRule, names: dict[str, str]) -> SecurityRule:
    item = SecurityRule.model_validate(rule)
    if rule.remote_group_id is not None:
        item.remote_group = names.get(rule.remote_group_id, rule.remote_group_id)
    return item


@router.get("")
def list_groups(ctx: CtxDep, principal: PrincipalDep) -> list[SecurityGroup]:
    uow = ctx.uow()  # the project's default group is made on first use
    with uow as s:
        return to_wire(s, secgroups.list_groups(s, principal))


@router.post("", status_code=201)
def create_group(body: SecurityGroupCreate, ctx: CtxDep, principal: PrincipalDep) -> SecurityGroup:
    uow = ctx.uow()
    with uow as s:
        return to_wire(s, [secgroups.create_group(uow, principal, body)])[0]


@router.get("/{ref}")
def get_group(ref: str, ctx: CtxDep, principal: PrincipalDep) -> SecurityGroup:
    uow = ctx.uow()
    with uow as s:
        return to_wire(s, [secgroups.get_group(s, principal, ref)])[0]


@router.delete("/{ref}", status_code=204)
def delete_group(ref: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    uow = ctx.uow()
    with uow:
        secgroups.delete_group(uow, principal, ref)
    return Response(status_code=204)


@router.post("/{ref}/rules", status_code=201)
def add_rule(
    ref: str, body: SecurityRuleCreate, ctx: CtxDep, principal: PrincipalDep
) -> SecurityRule:
    """Add an allow rule; running instances using the group get it at once."""
    uow = ctx.uow()
    with uow as s:
        rule = secgroups.add_rule(uow, principal, ref, body)
        names = {}
        if rule.remote_group_id is not None:
            other = s.get(models.SecurityGroup, rule.remote_group_id)
            names[rule.remote_group_id] = other.name if other is not None else ""
        return rule_wire(rule, names)


@router.delete("/{ref}/rules/{rule_id}", status_code=204)
def remove_rule(ref: str, rule_id: str, ctx: CtxDep, principal: PrincipalDep) -> Response:
    uow = ctx.uow()
    with uow:
        secgroups.remove_rule(uow, principal, ref, rule_id)
    return Response(status_code=204)
