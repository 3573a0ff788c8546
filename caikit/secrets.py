"""Keeping credentials out of everything caikit writes: redaction of key-shaped text, and URLs without
their `user:password@` part or key-like query parameters. Bottom layer: records, configs, logs and error
messages all pass through here."""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

_SECRET = re.compile(r"(sk-[A-Za-z0-9_\-]{6,}|(?i:bearer)\s+\S+)")
# query parameters that carry credentials: api-key, api_key, key, token, access_token, sig, signature, secret ...
_SECRET_PARAM = re.compile(r"(?i)(^|[-_])(api[-_]?key|key|token|secret|password|passwd|pwd|sig|signature|auth"
                           r"|authorization|credential|credentials|session)$")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove API keys (known values and anything key-shaped) from text bound for users."""
    for s in secrets:
        if s:
            text = text.replace(s, "***")
    return _SECRET.sub("***", text)


def public_url(url: str | None) -> str | None:
    """`url` without any user:password part, and with the values of key-like query parameters
    (`?api-key=...`, `&token=...`) replaced by ***, fit for records, configs and logs."""
    if not url:
        return None
    parts = urlsplit(url)
    if not parts.hostname:
        return url
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, "***" if _SECRET_PARAM.search(k) else v) for k, v in pairs], safe="*")
    return urlunsplit(parts._replace(netloc=host + (f":{parts.port}" if parts.port else ""), query=query))


def one_line(text: str, limit: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
