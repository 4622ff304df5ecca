"""Send alerts through apprise (Slack, Teams, email, generic webhooks), never with a secret.

`send` passes the title and body through the project's one redactor (`connectors.redact.redact`:
every registered `${...}` value and every URL password), with the secrets the caller names and
every target's apprise URL (and the token-like parts apprise keeps in it) as extra values to mask.
Target URLs are never logged, only their index and scheme. What to say and to whom is flows.notify's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence

from config.models import NotifyConfig
from connectors.redact import redact

log = logging.getLogger(__name__)


def url_secrets(url: str) -> set[str]:
    """An apprise URL and its token-like parts (8+ characters mixing letters and digits, no dots):
    apprise keeps tokens in the user, password, path and query of its URLs."""
    parts = re.split(r"[/:@?&=#]+", url.split("://", 1)[-1])
    tokens = {p for p in parts if len(p) >= 8 and "." not in p and re.search(r"\d", p) and re.search(r"[A-Za-z]", p)}
    return {url, *tokens}


def secrets_of(targets: Sequence[NotifyConfig], config_secrets: Iterable[str]) -> tuple[str, ...]:
    """What the redactor masks in a payload besides the registered secrets: the given secrets and
    the target URLs (and their tokens)."""
    return tuple({*config_secrets, *(s for t in targets for s in url_secrets(t.url))})


def send(targets: Sequence[NotifyConfig], events: set[str], title: str, body: str, *, secrets: Iterable[str] = (),
         kind: str = "info") -> list[int]:
    """Send to every target that subscribed to any of `events`; returns the indexes that succeeded."""
    import apprise

    extra = secrets_of(targets, secrets)
    title, body = redact(title, extra), redact(body, extra)
    notify_type = {"failure": apprise.NotifyType.FAILURE, "success": apprise.NotifyType.SUCCESS}.get(
        kind, apprise.NotifyType.INFO)
    sent = []
    for i, target in enumerate(targets):
        if not events & set(target.on):
            continue
        ap = apprise.Apprise()
        if not ap.add(target.url):
            log.warning("notify[%d]: not a valid apprise URL; fix notify[%d].url", i, i)
            continue
        scheme = target.url.split("://", 1)[0]
        if ap.notify(body=body, title=title, notify_type=notify_type, body_format=apprise.NotifyFormat.MARKDOWN):
            sent.append(i)
            log.info("notify[%d] (%s): sent %s", i, scheme, "/".join(sorted(events)))
        else:
            log.warning("notify[%d] (%s): sending failed", i, scheme)
    return sent
