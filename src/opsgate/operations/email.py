"""email-classify, email-respond and email-compose.

Input: a raw RFC 822 / MIME message in ``raw`` (at most :data:`MAX_RAW_CHARS` characters) or the
same content as structured fields in ``email`` (:class:`EmailFields`). Parsing: see
:mod:`opsgate.operations.mailparse`.

What a provider sees (and nothing else): From (with its display name), To, Cc, Date, Subject, the
attachments' names and types, the new text of the body and the quoted history. Each header value is
clipped at :data:`~opsgate.operations.mailparse.MAX_HEADER_CHARS` characters (Subject at
:data:`MAX_SUBJECT_CHARS`), so one forged header cannot blow up the prompt. Size cap per message:
the new text is kept up to :data:`MAX_NEW_CHARS` characters and the quoted history up to
:data:`MAX_QUOTED_CHARS`; the history is trimmed first and from its end, which holds the oldest
messages of a top-posted thread; cuts fall on line breaks (see :func:`common.clip`). Every
``Output`` says whether trimming happened (``trimmed``) and how (``trim_notes``).

Recipients, subject and threading headers of a draft are computed in code from the message; the
model only writes the text.

Answer limits (each string's ``maxLength`` sets the request's ``max_tokens``, see
:mod:`opsgate.operations.caps`): email-classify's ``reason`` is at most :data:`MAX_REASON_CHARS`
characters, a product decision of issue 16 — the prompt asks for "one short sentence" (about 20
words, 120 characters of English), and the former 400 held 100 more tokens of output, a quarter
of the whole cap, for every call.

Draft length (email-respond and email-compose, a product decision of issue 16): the input's
``length`` is ``short``, ``medium`` (the default) or ``long``, as writing assistants offer. Each sets
the draft's limits (:data:`DRAFT_LIMITS`): the body's ``maxLength`` (short 600 characters, about
100 words; medium 1,500, about 250 words; long 8,000, about 1,300 words, the one limit before) and
how many ``open_questions`` (300 characters each) the draft may list (short 2, medium 3, long 5).
A typical e-mail is 50-250 words, and a body of 8,000 characters for every draft held a
``max_tokens`` of 4,890-8,192 for answers a twentieth of that (the median call reserved 27-29x its
cost, ``./dev bench reservation``). The chosen limit is in the answer schema the model is given and
validated against (one answer model per length, built at import: :data:`DRAFT_ANSWERS`,
:data:`COMPOSE_ANSWERS`), and the prompt states the target ("at most about N words", at most *n*
open questions), so a model writing longer gets the schema-repair request, as for any other
limit; ``max_tokens`` follows from that schema (:func:`~opsgate.operations.caps.answer_cap`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from opsgate.operations.base import Operation, Prepared, Sent
from opsgate.operations.common import (
    Answer,
    build_request,
    clip,
    data_block,
    name_addr,
    user_request,
)
from opsgate.operations.prompts import PromptVersion
from opsgate.operations.mailparse import (
    MAX_HEADER_CHARS,
    Attachment,
    ParsedEmail,
    clip_header,
    parse_email,
    split_quoted,
)

MAX_RAW_CHARS = 2_000_000
MAX_NEW_CHARS = 12_000
MAX_QUOTED_CHARS = 4_000
MAX_SUBJECT_CHARS = 300
MAX_ATTACHMENTS_LISTED = 20
MAX_RECIPIENTS_LISTED = 20
MAX_QUESTION_CHARS = 300
"""One open question of a draft (bounds the answer, :mod:`opsgate.operations.caps`)."""
MAX_REASON_CHARS = 200
"""email-classify's one-sentence reason (bounds the answer, see the module doc)."""

Category = Literal[
    "personal", "work", "mailing-list", "newsletter", "promotion", "notification",
    "transactional", "bounce", "spam", "other",
]
CATEGORY_HELP = {
    "personal": "written by a person to the recipient about private matters",
    "work": "written by a person about work, a project, a customer or a colleague's request",
    "mailing-list": "a discussion post or digest from a mailing list or forum",
    "newsletter": "editorial content sent to subscribers",
    "promotion": "marketing, offers, sales",
    "notification": "automated alert or status message from a system or service",
    "transactional": "receipt, booking, invoice, password reset, account message",
    "bounce": "delivery failure report (non-delivery, delivery status notification)",
    "spam": "unsolicited bulk or fraudulent mail",
    "other": "none of the above",
}
Priority = Literal["low", "normal", "high", "urgent"]
Tone = Literal["neutral", "formal", "friendly", "brief"]
DraftLength = Literal["short", "medium", "long"]


@dataclass(frozen=True, slots=True)
class DraftLimit:
    """How long a draft of one :data:`DraftLength` may be: ``words``, the target the prompt
    states; ``body_chars``, the body's ``maxLength`` (about 6 characters of English per word with
    its space and punctuation); ``questions``, the most ``open_questions`` it lists."""

    words: int
    body_chars: int
    questions: int


DRAFT_LIMITS: dict[DraftLength, DraftLimit] = {
    "short": DraftLimit(words=100, body_chars=600, questions=2),
    "medium": DraftLimit(words=250, body_chars=1_500, questions=3),
    "long": DraftLimit(words=1_300, body_chars=8_000, questions=5),
}
"""A draft's limits per requested ``length`` (product decision, see the module doc)."""
DRAFT_PROMPT_FIELDS = ("max_words", "max_questions")
"""The prompt placeholders of a draft's length: the body's target in words, the most open questions."""


def draft_prompt_fields(length: DraftLength) -> dict[str, int]:
    """The values of :data:`DRAFT_PROMPT_FIELDS` for ``length``."""
    limit = DRAFT_LIMITS[length]
    return {"max_words": limit.words, "max_questions": limit.questions}


_REPLY_PREFIX = re.compile(r"^\s*(re|aw|sv|antw|vs|r)\s*:", re.IGNORECASE)


class AttachmentInfo(BaseModel):
    """An attachment's name and MIME type (``size_bytes`` when known). Never its content."""

    filename: str | None = Field(None, max_length=255)
    content_type: str = Field("application/octet-stream", max_length=255)
    size_bytes: int = Field(0, ge=0)


class EmailFields(BaseModel):
    """A message given as structured fields instead of ``raw``. Addresses are ``addr-spec``s."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field("", max_length=2_000)
    sender: str | None = Field(None, max_length=320)
    reply_to: list[str] = Field(default_factory=list, max_length=50)
    to: list[str] = Field(default_factory=list, max_length=500)
    cc: list[str] = Field(default_factory=list, max_length=500)
    date: str | None = Field(None, max_length=100)
    message_id: str | None = Field(None, max_length=1_000)
    references: list[str] = Field(default_factory=list, max_length=200)
    body: str = Field("", max_length=MAX_RAW_CHARS)
    attachments: list[AttachmentInfo] = Field(default_factory=list, max_length=200)


class EmailSource(BaseModel):
    """``raw`` (an RFC 822 message as text) or ``email`` (structured fields); at most one."""

    model_config = ConfigDict(extra="forbid")

    raw: str | None = Field(None, min_length=1, max_length=MAX_RAW_CHARS)
    email: EmailFields | None = None

    @model_validator(mode="after")
    def _at_most_one(self) -> EmailSource:
        if self.raw is not None and self.email is not None:
            raise ValueError("give either 'raw' or 'email', not both")
        return self

    def has_message(self) -> bool:
        """Whether a message was given at all."""
        return self.raw is not None or self.email is not None

    def parsed(self) -> ParsedEmail:
        """The message as a :class:`ParsedEmail`; raises InvalidInput when ``raw`` is no email."""
        if self.raw is not None:
            return parse_email(self.raw)
        if self.email is None:
            raise ValueError("no message given")
        fields = self.email
        new_text, quoted = split_quoted(fields.body)
        return ParsedEmail(
            subject=fields.subject, sender=fields.sender, sender_name=None,
            reply_to=fields.reply_to, to=fields.to, cc=fields.cc, date=fields.date,
            message_id=fields.message_id, references=fields.references, new_text=new_text,
            quoted_text=quoted,
            attachments=[
                Attachment(a.filename, a.content_type, a.size_bytes) for a in fields.attachments
            ],
        )


class RequiredEmail(EmailSource):
    """An :class:`EmailSource` where exactly one of ``raw`` / ``email`` is required."""

    @model_validator(mode="after")
    def _exactly_one(self) -> RequiredEmail:
        if not self.has_message():
            raise ValueError("give the message in 'raw' (RFC 822 text) or in 'email' (fields)")
        return self


class EmailInfo(BaseModel):
    """What the code read from the message, returned beside the model's answer."""

    subject: str
    sender: str | None
    date: str | None
    attachments: list[AttachmentInfo]
    html_only: bool
    trimmed: bool
    trim_notes: list[str]


EMAIL_SENT = (
    Sent(f"From address and display name (each at most {MAX_HEADER_CHARS} characters)"),
    Sent(f"To and Cc addresses (first {MAX_RECIPIENTS_LISTED} each, each at most {MAX_HEADER_CHARS} characters)"),
    Sent(f"Date (at most {MAX_HEADER_CHARS} characters)"),
    Sent("Subject", MAX_SUBJECT_CHARS),
    Sent(f"attachment names and types (first {MAX_ATTACHMENTS_LISTED}; never their content)"),
    Sent("new text of the body", MAX_NEW_CHARS),
    Sent("quoted history (its newest part)", MAX_QUOTED_CHARS),
)
"""What :func:`render_email` puts in a prompt."""
LENGTH_SENT = Sent("length (as its word and open-question limits)")
"""What a draft's ``length`` puts in a prompt (:func:`draft_prompt_fields`)."""


def _headers(mail: ParsedEmail) -> tuple[str, str, str, str, list[str]]:
    """The From, To, Cc and Date values of the prompt, every header value clipped at
    :data:`MAX_HEADER_CHARS` (:func:`clip_header`), and the names of the headers that were cut."""
    cut: list[str] = []

    def value(header: str, text: str) -> str:
        clipped, was_cut = clip_header(text)
        if was_cut and header not in cut:
            cut.append(header)
        return clipped

    def addresses(header: str, found: list[str]) -> str:
        return ", ".join(value(header, a) for a in found[:MAX_RECIPIENTS_LISTED]) or "(none)"

    sender = "(unknown)"
    if mail.sender:
        sender = name_addr(value("From", mail.sender_name or ""), value("From", mail.sender))
    date = value("Date", mail.date) if mail.date else "(unknown)"
    return sender, addresses("To", mail.to), addresses("Cc", mail.cc), date, cut


def render_email(mail: ParsedEmail) -> tuple[str, EmailInfo]:
    """The prompt text of ``mail`` (headers used, attachments, new text, trimmed history)."""
    notes: list[str] = []
    subject, cut_subject = clip(mail.subject, MAX_SUBJECT_CHARS)
    new_text, cut_new = clip(mail.new_text, MAX_NEW_CHARS)
    quoted, cut_quoted = clip(mail.quoted_text, MAX_QUOTED_CHARS)
    if cut_subject:
        notes.append(f"subject cut to {MAX_SUBJECT_CHARS} characters")
    if cut_quoted:
        notes.append(f"quoted history cut to its newest {MAX_QUOTED_CHARS} characters")
    if cut_new:
        notes.append(f"new text cut to its first {MAX_NEW_CHARS} characters")
    listed = mail.attachments[:MAX_ATTACHMENTS_LISTED]
    if len(mail.attachments) > len(listed):
        notes.append(f"only the first {MAX_ATTACHMENTS_LISTED} attachments listed")
    sender, to, cc, date, cut_headers = _headers(mail)
    if cut_headers:
        notes.append(f"header values cut to {MAX_HEADER_CHARS} characters: {', '.join(cut_headers)}")
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Cc: {cc}",
        f"Date: {date}",
        f"Subject: {subject}",
        "Attachments: "
        + (", ".join(f"{a.filename or '(unnamed)'} ({a.content_type})" for a in listed) or "none"),
        "",
        "New text:",
        new_text or "(empty)",
        "",
        "Quoted history:",
        quoted or "(none)",
    ]
    info = EmailInfo(
        subject=mail.subject,
        sender=mail.sender,
        date=mail.date,
        attachments=[AttachmentInfo(**vars(a)) for a in mail.attachments],
        html_only=mail.html_only,
        trimmed=bool(notes),
        trim_notes=notes,
    )
    return data_block("email", "\n".join(lines)), info


# ---------------------------------------------------------------- email-classify


class ClassifyInput(RequiredEmail):
    """email-classify input: the message only."""


class ClassifyAnswer(Answer):
    """The model's classification."""

    category: Category
    priority: Priority
    needs_reply: bool
    confidence: float = Field(ge=0, le=1)
    reason: str = Field(max_length=MAX_REASON_CHARS)


class ClassifyOutput(ClassifyAnswer):
    """The classification plus what the code read from the message."""

    email: EmailInfo


class EmailClassify(Operation):
    """Classify one message into :data:`CATEGORY_HELP`'s labels with priority and needs-reply."""

    id = "email-classify"
    Input = ClassifyInput
    reads = ("raw", "email")
    ModelOutput = ClassifyAnswer
    Output = ClassifyOutput
    sends = EMAIL_SENT
    prompt_fields = frozenset({"labels"})

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Parse the message and ask for a classification."""
        assert isinstance(data, ClassifyInput)
        mail = data.parsed()
        text, info = render_email(mail)
        labels = "\n".join(f"- {name}: {meaning}" for name, meaning in CATEGORY_HELP.items())
        system = self.system_prompt(prompt, labels=labels)
        request = build_request(system, text, ClassifyAnswer, "email_classification")
        return Prepared(request=request, context={"email": info}, people=tuple(mail.people))

    def finish(self, prepared: Prepared, answer: BaseModel) -> ClassifyOutput:
        """Merge the answer with the parsed message's info."""
        assert isinstance(answer, ClassifyAnswer)
        return ClassifyOutput(**answer.model_dump(), email=prepared.context["email"])


# ---------------------------------------------------------------- email-respond


class RespondInput(RequiredEmail):
    """email-respond input: the message and how to answer it.

    ``me`` lists the user's own addresses (left out of the recipients); ``reply_all`` keeps the
    original To/Cc as Cc; ``length`` sets the draft's limits (:data:`DRAFT_LIMITS`).
    """

    instructions: str | None = Field(None, max_length=2_000)
    tone: Tone = "neutral"
    length: DraftLength = "medium"
    reply_all: bool = False
    me: list[str] = Field(default_factory=list, max_length=20)


class DraftAnswer(Answer):
    """The model's reply text: ``language`` is a BCP 47 tag such as ``en`` or ``de``."""

    # The widest limits, a long draft's; each request is answered in its length's model
    # (DRAFT_ANSWERS, COMPOSE_ANSWERS), whose description adds the limits.
    language: str = Field(max_length=35)
    body: str = Field(max_length=DRAFT_LIMITS["long"].body_chars)
    open_questions: list[Annotated[str, Field(max_length=MAX_QUESTION_CHARS)]] = Field(
        max_length=DRAFT_LIMITS["long"].questions)


D = TypeVar("D", bound=DraftAnswer)


def by_length(model: type[D]) -> dict[DraftLength, type[D]]:
    """``model`` with each :data:`DraftLength`'s limits on ``body`` and ``open_questions``, one
    subclass per length (named ``<model>Short`` ...), its other fields unchanged; its description
    (sent to the model with the schema) is ``model``'s plus the limits in words."""
    return {
        length: create_model(
            f"{model.__name__}{length.title()}", __base__=model,
            __doc__=f"{model.__doc__} A {length} draft: body at most {limit.body_chars} characters "
                    f"(about {limit.words} words), at most {limit.questions} open questions.",
            body=(str, Field(max_length=limit.body_chars)),
            open_questions=(list[Annotated[str, Field(max_length=MAX_QUESTION_CHARS)]],
                            Field(max_length=limit.questions)),
        )
        for length, limit in DRAFT_LIMITS.items()
    }


DRAFT_ANSWERS = by_length(DraftAnswer)
"""email-respond's answer model per ``length``."""


class ReplyOutput(BaseModel):
    """A reply draft: recipients, subject and threading headers from code, text from the model."""

    to: list[str]
    cc: list[str]
    subject: str
    body: str
    language: str
    in_reply_to: str | None
    references: list[str]
    open_questions: list[str]
    email: EmailInfo


def reply_recipients(mail: ParsedEmail, reply_all: bool, me: list[str]) -> tuple[list[str], list[str]]:
    """``(to, cc)`` of a reply per RFC 5322 §3.6.3: Reply-To, else From; with ``reply_all`` the
    original To and Cc become Cc. The user's own addresses and duplicates are removed."""
    mine = {address.lower() for address in me}
    to = _unique(mail.reply_to or ([mail.sender] if mail.sender else []), mine)
    cc = _unique(mail.to + mail.cc, mine | {a.lower() for a in to}) if reply_all else []
    return to, cc


def reply_subject(subject: str) -> str:
    """``Re: subject`` unless the subject already starts with a reply prefix."""
    return subject if _REPLY_PREFIX.match(subject) else f"Re: {subject}".rstrip()


def _unique(addresses: list[str], exclude: set[str]) -> list[str]:
    seen: set[str] = set(exclude)
    result = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            result.append(address)
    return result




class EmailRespond(Operation):
    """Draft a reply to one message."""

    id = "email-respond"
    Input = RespondInput
    reads = ("raw", "email")
    ModelOutput = DraftAnswer
    Output = ReplyOutput
    sends = (*EMAIL_SENT, Sent("instructions"), Sent("tone"), LENGTH_SENT)
    prompt_fields = frozenset({"tone", *DRAFT_PROMPT_FIELDS})

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Parse the message, compute recipients and subject, ask for the reply text."""
        assert isinstance(data, RespondInput)
        mail = data.parsed()
        text, info = render_email(mail)
        to, cc = reply_recipients(mail, data.reply_all, data.me)
        system = self.system_prompt(prompt, tone=data.tone, **draft_prompt_fields(data.length))
        user = text
        if data.instructions:
            user += "\n\n" + user_request(data.instructions)
        answer = DRAFT_ANSWERS[data.length]
        request = build_request(system, user, answer, "email_reply")
        references = [*mail.references, *([mail.message_id] if mail.message_id else [])]
        context = {
            "email": info, "to": to, "cc": cc, "subject": reply_subject(mail.subject),
            "in_reply_to": mail.message_id, "references": references,
        }
        return Prepared(request=request, context=context, answer_model=answer,
                        people=tuple(mail.people))

    def finish(self, prepared: Prepared, answer: BaseModel) -> ReplyOutput:
        """Merge the reply text with the computed recipients and headers."""
        assert isinstance(answer, DraftAnswer)
        return ReplyOutput(**prepared.context, **answer.model_dump())


# ---------------------------------------------------------------- email-compose


class ComposeInput(EmailSource):
    """email-compose input: what to write (``instructions``) and/or a message it is about.

    Recipients are ``to``/``cc`` as given; when ``to`` is empty and a message is given, the
    draft goes to that message's Reply-To or From. Without ``instructions`` the draft is a short
    follow-up on the given message. ``length`` sets the draft's limits (:data:`DRAFT_LIMITS`).
    """

    instructions: str | None = Field(None, min_length=1, max_length=4_000)
    to: list[str] = Field(default_factory=list, max_length=100)
    cc: list[str] = Field(default_factory=list, max_length=100)
    tone: Tone = "neutral"
    language: str | None = Field(None, max_length=35)
    length: DraftLength = "medium"

    @model_validator(mode="after")
    def _something_to_write(self) -> ComposeInput:
        if self.instructions is None and not self.has_message():
            raise ValueError("give 'instructions', or a message in 'raw' or 'email', or both")
        return self


class ComposeAnswer(DraftAnswer):
    """The model's new email: a subject besides the draft fields."""

    subject: str = Field(max_length=200)


COMPOSE_ANSWERS = by_length(ComposeAnswer)
"""email-compose's answer model per ``length``."""


class ComposeOutput(BaseModel):
    """A new email draft."""

    to: list[str]
    cc: list[str]
    subject: str
    body: str
    language: str
    open_questions: list[str]
    email: EmailInfo | None


DEFAULT_COMPOSE = "Write a short, polite follow-up email to the sender about this message."


class EmailCompose(Operation):
    """Compose a new email from instructions, optionally about a given message."""

    id = "email-compose"
    Input = ComposeInput
    reads = ("raw", "email")
    ModelOutput = ComposeAnswer
    Output = ComposeOutput
    sends = (Sent("instructions"), Sent("tone"), Sent("language"), LENGTH_SENT, *EMAIL_SENT)
    prompt_fields = frozenset({"language", "tone", *DRAFT_PROMPT_FIELDS})

    def prepare(self, data: BaseModel, prompt: PromptVersion | None = None) -> Prepared:
        """Build the prompt from the instructions and the optional message."""
        assert isinstance(data, ComposeInput)
        parts = [user_request(data.instructions or DEFAULT_COMPOSE)]
        info = None
        to = list(data.to)
        people: tuple[tuple[str, str], ...] = ()
        if data.has_message():
            mail = data.parsed()
            people = tuple(mail.people)
            text, info = render_email(mail)
            parts.append(text)
            if not to:
                to, _ = reply_recipients(mail, False, [])
        language = f"Write in {data.language}." if data.language else (
            "Write in the language of the instructions, or of the email if one is given."
        )
        system = self.system_prompt(prompt, tone=data.tone, language=language,
                                    **draft_prompt_fields(data.length))
        answer = COMPOSE_ANSWERS[data.length]
        request = build_request(system, "\n\n".join(parts), answer, "email_draft", language=data.language)
        return Prepared(request=request, context={"email": info, "to": to, "cc": list(data.cc)},
                        answer_model=answer, people=people)

    def finish(self, prepared: Prepared, answer: BaseModel) -> ComposeOutput:
        """Merge the draft with the recipients."""
        assert isinstance(answer, ComposeAnswer)
        return ComposeOutput(**prepared.context, **answer.model_dump())
