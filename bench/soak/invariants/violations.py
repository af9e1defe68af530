"""What the checker reports: one violation of an invariant, about one subject."""

from __future__ import annotations

from dataclasses import dataclass

# Section 4 of issue 13, one kind per way an invariant can be broken.
WALLET_UNRECONCILED = "wallet_unreconciled"  # subject: user id
WALLET_NEGATIVE = "wallet_negative"  # subject: user id
GENERATION_NOT_TERMINAL = "generation_not_terminal"  # subject: generation id
GENERATION_CHARGE = "generation_charge"  # subject: generation id
PURCHASE_CREDIT = "purchase_credit"  # subject: purchase id (or the transfer id of a stray credit)
ANALYTICS_MISSING = "analytics_missing"  # subject: the fact's id (user, session, file, ...)
ANALYTICS_DUPLICATE = "analytics_duplicate"  # subject: the event id, or the fact's id
EVENT_UNDELIVERED = "event_undelivered"  # subject: event id (still in an outbox, or dead-lettered)
FILE_WITHOUT_ROW = "file_without_row"  # subject: storage key
FILE_WITHOUT_BYTES = "file_without_bytes"  # subject: file id
RESULT_OF_UNFINISHED_GENERATION = "result_of_unfinished_generation"  # subject: file id
HTTP_SERVER_ERROR = "http_server_error"  # subject: "<method> <route> @<unix time>"
HTTP_NO_ANSWER = "http_no_answer"  # subject: "<method> <route> @<unix time>"
PLATFORM_NOT_READY = "platform_not_ready"  # subject: the gateway's URL

KINDS = (
    WALLET_UNRECONCILED,
    WALLET_NEGATIVE,
    GENERATION_NOT_TERMINAL,
    GENERATION_CHARGE,
    PURCHASE_CREDIT,
    ANALYTICS_MISSING,
    ANALYTICS_DUPLICATE,
    EVENT_UNDELIVERED,
    FILE_WITHOUT_ROW,
    FILE_WITHOUT_BYTES,
    RESULT_OF_UNFINISHED_GENERATION,
    HTTP_SERVER_ERROR,
    HTTP_NO_ANSWER,
    PLATFORM_NOT_READY,
)


@dataclass(frozen=True, order=True)
class Violation:
    kind: str
    subject: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind} {self.subject}: {self.message}"
