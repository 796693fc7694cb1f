"""Self-registration: a request, an e-mailed verification link, an admin's approval.

1. ``POST /register`` (when the ``registration`` setting is on) stores the request with
   an argon2 hash of the password and e-mails a link holding a random secret (only its
   SHA-256 is stored; it expires after :data:`LINK_LIFETIME`).
2. ``GET /register/verify?token=...`` confirms the address; the request now waits for an
   admin.
3. A cloud admin approves (the user is created, in a given project or a new one named
   after them) or rejects it. The applicant is told by e-mail either way.

No account exists before approval, so a pending applicant's login fails like any wrong
password.
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from urllib.parse import quote

from sqlalchemy import select
from sqlalchemy.orm import Session

from stratuslab.config import ControllerSettings
from stratuslab.db.models import Registration, User
from stratuslab.errors import Conflict, Forbidden, InvalidInput, NotFound, ServiceUnavailable
from stratuslab.identity.passwords import Passwords, check_new_password
from stratuslab.identity.principal import Principal
from stratuslab.identity.quotas import Limits
from stratuslab.services import users
from stratuslab.services.auth import hash_secret, new_secret
from stratuslab.types import Role

log = logging.getLogger(__name__)
LINK_LIFETIME = timedelta(hours=48)
PENDING_EMAIL = "pending_email"
PENDING_APPROVAL = "pending_approval"
APPROVED = "approved"
REJECTED = "rejected"


@dataclass(frozen=True)
class Mail:
    to: str
    subject: str
    body: str


def require_enabled(settings: ControllerSettings) -> None:
    if not settings.registration:
        raise Forbidden(
            "self-registration is not enabled on this cloud",
            hint="ask the cloud administrators for an account",
            code="registration_disabled",
        )


def request(
    session: Session,
    settings: ControllerSettings,
    passwords: Passwords,
    *,
    username: str,
    email: str,
    password: str,
    full_name: str,
    now: datetime,
) -> tuple[Registration, Mail]:
    """Store a registration request; return it and the verification mail to send."""
    require_enabled(settings)
    check_new_password(password, username=username)
    taken = session.scalar(select(User.id).where(User.name == username)) or session.scalar(
        select(Registration.id).where(
            Registration.username == username,
            Registration.status.in_([PENDING_EMAIL, PENDING_APPROVAL, APPROVED]),
            Registration.expires_at > now,
        )
    )
    if taken is not None:
        raise Conflict(
            f"the user name {username!r} is taken",
            hint="choose another user name",
            code="user_exists",
        )
    secret = new_secret()
    row = Registration(
        username=username,
        email=email,
        full_name=full_name,
        password_hash=passwords.hash(password),
        email_token_hash=hash_secret(secret),
        expires_at=now + LINK_LIFETIME,
        status=PENDING_EMAIL,
    )
    session.add(row)
    session.flush()
    link = f"{base_url(settings)}/api/v1/register/verify?token={quote(secret)}"
    mail = Mail(
        to=email,
        subject="Confirm your StratusLab registration",
        body=f"Hello {full_name or username},\n\n"
        f"someone (hopefully you) asked for the account {username!r} on this cloud.\n"
        f"Open this link within 48 hours to confirm your e-mail address:\n\n  {link}\n\n"
        "An administrator then reviews the request. If it was not you, ignore this mail.\n",
    )
    return row, mail


def base_url(settings: ControllerSettings) -> str:
    return (settings.public_url or f"http://{settings.host}:{settings.port}").rstrip("/")


def verify(session: Session, secret: str, *, now: datetime) -> Registration:
    row = session.scalar(
        select(Registration).where(Registration.email_token_hash == hash_secret(secret))
    )
    if row is None or row.status != PENDING_EMAIL or now >= row.expires_at:
        raise NotFound(
            "this verification link is not valid (used, expired or mistyped)",
            hint="register again if it expired",
            code="invalid_link",
        )
    row.verified_at = now
    row.status = PENDING_APPROVAL
    return row


def list_registrations(session: Session, status: str | None) -> list[Registration]:
    stmt = select(Registration).order_by(Registration.created_at)
    if status is not None:
        stmt = stmt.where(Registration.status == status)
    return list(session.scalars(stmt))


def _pending(session: Session, reg_id: str) -> Registration:
    row = session.get(Registration, reg_id)
    if row is None:
        raise NotFound(
            f"registration {reg_id!r} does not exist",
            hint="`stratus user registrations`",
            code="registration_not_found",
        )
    if row.status != PENDING_APPROVAL:
        raise Conflict(
            f"registration {reg_id} is {row.status.replace('_', ' ')}, not awaiting approval",
            hint="only requests whose e-mail was confirmed can be decided",
            code="not_pending",
        )
    return row


def approve(
    session: Session,
    principal: Principal,
    passwords: Passwords,
    reg_id: str,
    *,
    project: str | None,
    role: str,
    limits: Limits,
    now: datetime,
) -> tuple[Registration, Mail]:
    row = _pending(session, reg_id)
    try:
        member_role = Role(role)
    except ValueError:
        raise InvalidInput(f"unknown role {role!r}", hint="admin, member or reader") from None
    user = users.create_user(
        session,
        passwords,
        name=row.username,
        email=row.email,
        full_name=row.full_name,
        password_hash=row.password_hash,
        project=project,
        role=member_role,
        limits=limits,
    )
    row.user_id, row.status = user.id, APPROVED
    row.decided_by, row.decided_at = principal.user_id, now
    return row, Mail(
        to=row.email,
        subject="Your StratusLab account is ready",
        body=f"Hello {row.full_name or row.username},\n\nyour account {row.username!r} was "
        "approved. Log in with `stratus login`.\n",
    )


def reject(
    session: Session, principal: Principal, reg_id: str, *, reason: str, now: datetime
) -> tuple[Registration, Mail]:
    row = _pending(session, reg_id)
    row.status, row.reason = REJECTED, reason
    row.decided_by, row.decided_at = principal.user_id, now
    why = f"\n\nThe reason given: {reason}\n" if reason else "\n"
    return row, Mail(
        to=row.email,
        subject="Your StratusLab registration",
        body=f"Hello {row.full_name or row.username},\n\nyour request for the account "
        f"{row.username!r} was not approved.{why}",
    )


def send(settings: ControllerSettings, mail: Mail) -> None:
    """Send one mail through the configured SMTP server (ServiceUnavailable on failure)."""
    if not settings.smtp_host:
        raise ServiceUnavailable(
            "no SMTP server is configured, so no verification e-mail can be sent",
            hint="the cloud administrators must set smtp_host",
            code="smtp_unavailable",
        )
    message = EmailMessage()
    message["From"] = settings.smtp_from
    message["To"] = mail.to
    message["Subject"] = mail.subject
    message.set_content(mail.body)
    try:
        with smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=10) as smtp:
            if settings.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if settings.smtp_username:
                smtp.login(settings.smtp_username, settings.smtp_password)
            smtp.send_message(message)
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("sending mail to %s failed: %s", mail.to, exc)
        raise ServiceUnavailable(
            "the e-mail could not be sent",
            hint="try again later; if it persists, tell the cloud administrators",
            code="smtp_unavailable",
        ) from None


def send_quietly(settings: ControllerSettings, mail: Mail) -> None:
    """A notice whose loss does not undo anything (approval, rejection)."""
    try:
        send(settings, mail)
    except ServiceUnavailable:
        log.warning("notice to %s not sent", mail.to)
