"""Mask secrets in log text: passwords inside URLs, and the configured passwords anywhere.

>>> mask_secrets("connect amqp://app:pw@rabbit:5672 failed")
'connect amqp://app:***@rabbit:5672 failed'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable

#: Matches the password of a URL's userinfo (scheme://user:PASSWORD@host): everything up
#: to the last ``@`` before the next whitespace, so a password holding ``@``, ``/``, ``?``,
#: ``#`` or ``:`` is masked whole (a URL with a raw ``@`` further on is masked up to it).
_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^/\s:@]*:)(?:[^\s@]*@)+")

#: Configured secrets shorter than this are not masked outside URLs (it would garble lines).
MIN_MASKED_SECRET_CHARS = 6
#: The exact configured secrets (see mask_configured_secrets), longest first.
_configured_secrets: tuple[str, ...] = ()


def mask_secrets(text: str) -> str:
    """Mask passwords inside URLs, whatever characters they hold, and the configured
    secrets (:func:`mask_configured_secrets`) wherever they appear.

    >>> mask_secrets("connect amqp://app:p@ss/w?o#rd@rabbit:5672 failed")
    'connect amqp://app:***@rabbit:5672 failed'
    """
    for secret in _configured_secrets:
        if secret in text:
            text = text.replace(secret, "***")
    if "://" not in text:  # most lines: skip the regular expression
        return text
    return _URL_PASSWORD.sub(r"\g<head>***@", text)


def mask_configured_secrets(secrets: Iterable[str]) -> None:
    """Mask these exact strings (the configured passwords) in every line from now on, also
    as JSON and ``repr()`` write them; each shorter than MIN_MASKED_SECRET_CHARS only inside URLs.

    >>> mask_configured_secrets(["pa ss word"])
    >>> mask_secrets("login with 'pa ss word' refused")
    "login with '***' refused"
    >>> mask_configured_secrets([])
    """
    global _configured_secrets
    written = {form for secret in secrets for form in (secret, repr(secret)[1:-1])}
    forms = written | {json.dumps(form, ensure_ascii=False)[1:-1] for form in written}
    _configured_secrets = tuple(
        sorted((form for form in forms if len(form) >= MIN_MASKED_SECRET_CHARS), key=len, reverse=True)
    )
