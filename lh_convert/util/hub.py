"""Small helpers for talking to the Hugging Face hub without hanging: a hard deadline, and a
few-word reason for a failure that fits in a one-line error."""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Any

from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)

# Seconds to wait for the hub before telling the user to use a local copy instead. It bounds
# the whole call, DNS included, which the HTTP client's own timeout does not cover.
HUB_TIMEOUT_S = 10.0
# A hub repository id, `org/name` (models and datasets alike).
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def call_with_deadline(function: Callable[[], Any], *, timeout_s: float) -> Any:
    """Run ``function()`` in a daemon thread; raise TimeoutError if it has not returned in time.

    A daemon thread, because a blocked DNS lookup cannot be cancelled and must not hold up exit.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = function()
        except BaseException as error:  # handed to the caller's thread below
            outcome["error"] = error

    worker = threading.Thread(target=target, name="lh-convert-hub-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def short_reason(error: BaseException, *, kind: str = "repository") -> str:
    """The cause of a failed hub call in a few words, for a one-line message."""
    if isinstance(error, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set"
    if isinstance(error, GatedRepoError):
        return "gated repository: accept its license on huggingface.co, then run `hf auth login`"
    if isinstance(error, RepositoryNotFoundError):
        return f"{kind} not found, or private and you are not logged in"
    if isinstance(error, HfHubHTTPError) and error.response is not None:
        return f"HTTP {error.response.status_code}"
    if isinstance(error, TimeoutError):
        return str(error)
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line}"[:160]
