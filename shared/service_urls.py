"""The backing services' URLs: checks that refuse what their clients cannot use, and redaction.

A check's reason never quotes any part of the URL (it may hold a password).

>>> redact_url("amqp://app:s3cret@rabbit:5672/%2F")
'amqp://app:***@rabbit:5672/%2F'
>>> rabbitmq_credentials("amqp://rabbit/%2F")
('guest', 'guest')
"""

from __future__ import annotations

from urllib.parse import SplitResult, parse_qs, unquote, urlencode, urlsplit

from pydantic import SecretStr

#: What a password inside a URL is replaced with wherever a URL is shown.
REDACTED = "***"
#: Redis database numbers run from 0 to this (its ``databases`` limit, a C int).
MAX_REDIS_DB = 2**31 - 2
#: The user greenroom's RabbitMQ client logs in as when the URL names none (pika's default).
RABBITMQ_DEFAULT_CREDENTIALS = ("guest", "guest")


def redact_url(url: str) -> str:
    """Return ``url`` with its password replaced, safe for logs and output.

    Everything up to the last ``@`` counts as user and password, so a password
    holding ``@``, ``/``, ``?`` or ``#`` is hidden however the URL parses.

    >>> redact_url("amqp://app:s3cret@rabbit:5672/%2F")
    'amqp://app:***@rabbit:5672/%2F'
    >>> redact_url("amqp://app:Sup3r/Secret@rabbit:5672/%2F")
    'amqp://app:***@rabbit:5672/%2F'
    """
    scheme, separator, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not (separator and at and colon):
        return url  # no password in it
    return f"{scheme}://{user}:{REDACTED}@{host}"


#: How to write a password (or user name) that holds characters URLs reserve.
PERCENT_ENCODING_HINT = (
    "percent-encode the user name and password (/ as %2F, ? as %3F, # as %23, @ as %40, : as %3A, "
    "% as %25, a space as %20)"
)


def check_url(value: SecretStr, schemes: tuple[str, ...]) -> SecretStr:
    """Refuse a URL greenroom's clients cannot use; the reason never quotes any part of it."""
    url = value.get_secret_value()
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError:
        raise ValueError(
            f"not a valid URL: its host and port cannot be read; {PERCENT_ENCODING_HINT}"
        ) from None
    if parts.scheme not in schemes:
        raise ValueError(f"scheme must be one of {', '.join(s + '://' for s in schemes)}")
    if any(character.isspace() or not character.isprintable() for character in url):
        # urlsplit drops some silently, and a log line's masking ends a URL at whitespace.
        raise ValueError(
            f"not a valid URL: it holds whitespace or control characters; {PERCENT_ENCODING_HINT}"
        )
    if "@" in parts.path + parts.query + parts.fragment:
        # "user:123/abc@host" parses as host "user", port 123: a password cut at "/".
        raise ValueError(f"not a valid URL: an '@' after the host; {PERCENT_ENCODING_HINT}")
    if not parts.hostname:
        raise ValueError("URL has no host")
    return value


def rabbitmq_credentials(url: str) -> tuple[str, str]:
    """The user and password RabbitMQ sees for ``url``: percent-decoded, guest/guest if it names none.

    >>> rabbitmq_credentials("amqp://guest:gu%65st@rabbit/%2F")
    ('guest', 'guest')
    >>> rabbitmq_credentials("amqp://rabbit/%2F")
    ('guest', 'guest')
    """
    parts = urlsplit(url)
    if not parts.username:
        return RABBITMQ_DEFAULT_CREDENTIALS
    return unquote(parts.username), unquote(parts.password or "")


def check_redis_database(parts: SplitResult) -> None:
    """The database of a Redis URL (path ``/N`` or ``?db=N``) must be a number redis-py will use."""
    path = unquote(parts.path)
    from_path = path.removeprefix("/")
    from_query = parse_qs(parts.query).get("db", [])
    candidates = ([from_path] if from_path else []) + from_query[:1]
    if len(from_query) > 1 or len(set(candidates)) > 1:
        raise ValueError("the database is given more than once (path /N and ?db=N)")
    for number in candidates:
        if not number.isascii() or not number.isdigit() or int(number) > MAX_REDIS_DB:
            raise ValueError(
                f"the database (path /N or ?db=N) must be a number from 0 to {MAX_REDIS_DB}, "
                "as in redis://host:6379/0"
            )


def check_redis_query(parts: SplitResult) -> None:
    """Each ``?name=value`` of a Redis URL must be one redis-py can use (the reason names only ``name``)."""
    if not parts.query:
        return  # no redis-py import (a large one): a worker whose tasks store no results never needs it
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    for name, values in parse_qs(parts.query).items():
        parser = URL_QUERY_ARGUMENT_PARSERS.get(name)
        try:
            if _non_finite(values[0]):
                raise ValueError
            if parser is not None:
                parser(values[0])
        except (TypeError, ValueError):
            raise ValueError(f"?{name}= has a value redis-py cannot use") from None


def check_amqp_query(parts: SplitResult) -> None:
    """Each ``?name=value`` of an AMQP URL must be one pika takes (the reason names only ``name``)."""
    import pika  # imported here: only this check needs it

    for name, values in parse_qs(parts.query, keep_blank_values=True).items():
        try:
            if _non_finite(values[-1]):
                raise ValueError
            pika.URLParameters(f"{parts.scheme}://127.0.0.1/?{urlencode({name: values[-1]})}")
        except Exception:  # pika raises ValueError, TypeError, SyntaxError ... for a bad option
            raise ValueError(f"?{name}= is not an option pika takes, or has a value it cannot use") from None


def _non_finite(value: str) -> bool:
    """Whether ``value`` spells infinity or NaN (which Python's float() accepts)."""
    return value.strip().lower().lstrip("+-") in ("inf", "infinity", "nan")
