"""Alert channels: Microsoft Teams (Workflows webhook), Slack (incoming webhook), a generic JSON webhook,
and an Event Grid custom topic (CloudEvents 1.0, the managed identity) that other systems subscribe to.

Each channel turns a Notice into its payload (controller/alerts.py) and POSTs it. Redirects are never
followed: a redirect would hand the alert, and any token in the URL, to whatever host the receiver
(or someone who took over its name) points at. The URL is a secret in most receivers and is never
echoed in an error. 429, 408 and 5xx are transient; other refusals are permanent (the desk keeps the
delivery pending with a long back-off either way, so a fixed URL still gets it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import requests
from azure.core.credentials import TokenCredential
from azure.core.messaging import CloudEvent
from azure.eventgrid import EventGridPublisherClient

from controller.adapters.azure_errors import translated
from controller.alerts import ChannelKind, Notice, cloud_event_type, notice_json, slack_message, teams_card
from controller.errors import PermanentError, TransientError

#: CloudEvents ``source`` of every alert the controller publishes.
CLOUD_EVENT_SOURCE = "/cmk-controller/alerts"

_PAYLOADS: dict[ChannelKind, Callable[[Notice], dict[str, object]]] = {
    ChannelKind.TEAMS: teams_card,
    ChannelKind.SLACK: slack_message,
    ChannelKind.WEBHOOK: notice_json,
}


class WebhookChannel:
    def __init__(self, kind: ChannelKind, url: str, *, session: requests.Session | None = None,
                 timeout: float = 10.0) -> None:
        if kind not in _PAYLOADS:
            raise ValueError(f"{kind.value} is not a webhook channel")
        self.kind = kind
        self._url = url
        self._payload = _PAYLOADS[kind]
        self._session = session or requests.Session()
        self._timeout = timeout

    def deliver(self, notice: Notice) -> None:
        body = json.dumps(self._payload(notice))
        try:
            response = self._session.post(self._url, data=body, timeout=self._timeout, allow_redirects=False,
                                          headers={"Content-Type": "application/json"})
        except requests.RequestException as err:
            raise TransientError(f"the {self.kind.value} webhook is unreachable: {type(err).__name__}") from err
        status = response.status_code
        if 200 <= status < 300:
            return
        if 300 <= status < 400:
            raise PermanentError(f"the {self.kind.value} webhook answered HTTP {status} (a redirect): alerts are "
                                 "never forwarded; configure the final URL")
        if status in (408, 429) or status >= 500:
            raise TransientError(f"the {self.kind.value} webhook is unavailable: HTTP {status}")
        raise PermanentError(f"the {self.kind.value} webhook refused the alert: HTTP {status}")


class EventGridTopicChannel:
    """Publishes each notice as one CloudEvent to an Event Grid custom topic, as the managed identity
    (EventGrid Data Sender on the topic). The event id is the notice's key, so a notice re-sent after
    a crash is the same event to subscribers that dedupe on it."""

    kind = ChannelKind.EVENT_GRID

    def __init__(self, endpoint: str, credential: TokenCredential, **request_options: Any) -> None:
        self._client = EventGridPublisherClient(endpoint, credential)
        # Per request: the basic-topic client (azure-eventgrid 4.22) does not pass constructor options on.
        # A redirect would hand the token-authenticated alert to another host: never follow one.
        self._request_options = {**request_options, "permit_redirects": False}

    def deliver(self, notice: Notice) -> None:
        event = CloudEvent(source=CLOUD_EVENT_SOURCE, type=cloud_event_type(notice), data=notice_json(notice),
                           subject=notice.alert.resource, id=notice.key)
        with translated("publish the alert to the Event Grid topic"):
            self._client.send([event], **self._request_options)

    def close(self) -> None:
        self._client.close()


if TYPE_CHECKING:  # mypy proves the adapters satisfy their port
    from controller.ports import AlertChannel

    def _implements_port(adapter: WebhookChannel | EventGridTopicChannel) -> AlertChannel:
        return adapter
