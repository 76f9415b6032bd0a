"""One table from afinar's typed errors to what each API answers: the HTTP status (the OpenAI
and afinar routes'), the AWS error code (botocore raises the class of that name; its status
comes from the service's model) and the OpenAI error code. Routes translate with `lookup` /
`aws_error`; nothing matches on message text."""

from __future__ import annotations

from afinar.errors import (
    AfinarError,
    Conflict,
    ModelNotFoundError,
    NotFound,
    QuotaExceeded,
)
from afinar.inference.requests import (
    BackendUnavailable,
    ModelUnavailable,
    Overloaded,
)
from afinar.serve.awsproto import ApiError
from afinar.storage import StorageError

# most specific first: the first row the error is an instance of answers
TABLE: list[tuple[type[Exception], int, str, str]] = [
    (Overloaded, 429, "ThrottlingException", "rate_limit_exceeded"),
    (BackendUnavailable, 503, "ServiceUnavailableException", "backend_unavailable"),
    (ModelUnavailable, 404, "ResourceNotFoundException", "model_not_found"),
    (ModelNotFoundError, 404, "ResourceNotFoundException", "model_not_found"),
    (NotFound, 404, "ResourceNotFoundException", "not_found"),
    (Conflict, 409, "ConflictException", "conflict"),
    (QuotaExceeded, 429, "ServiceQuotaExceededException", "quota_exceeded"),
    (StorageError, 400, "ValidationException", "invalid_request_error"),
    # every other typed error (InvalidRequest, RequestError, DataError, ConfigError, ...) is
    # bad input: the message says what, where and how to fix it
    (AfinarError, 400, "ValidationException", "invalid_request_error"),
]


def lookup(e: Exception) -> tuple[int, str, str]:
    """(HTTP status, AWS code, OpenAI code) of a typed error."""
    for kind, status, aws, openai in TABLE:
        if isinstance(e, kind):
            return status, aws, openai
    raise TypeError(f"{type(e).__name__} is not an afinar error") from e


def message(e: Exception) -> str:
    """The error's message, its hint (if any) after a semicolon."""
    return str(e).replace("\n  hint: ", "; ")


def aws_error(e: Exception) -> ApiError:
    """The AWS error; its HTTP status is the one the answering service's model gives the code
    (ConflictException is 400 in bedrock, 409 in bedrock-agent)."""
    _, code, _ = lookup(e)
    return ApiError(code, message(e))
