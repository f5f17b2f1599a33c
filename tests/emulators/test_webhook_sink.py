import json
import urllib.error
import urllib.request

import pytest

from emulators.webhook_sink import WebhookSink

pytestmark = pytest.mark.integration


def post(url: str, body: bytes) -> int:
    request = urllib.request.Request(  # noqa: S310 - loopback sink
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - loopback sink
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_records_json_and_text_bodies_and_serves_them():
    with WebhookSink() as sink:
        assert post(f"{sink.url}/alerts", json.dumps({"severity": "critical"}).encode()) == 200
        assert post(f"{sink.url}/teams/x", b"not json") == 200
        records = sink.wait_for(2)
        assert [(record.path, record.body) for record in records] == [
            ("/alerts", {"severity": "critical"}),
            ("/teams/x", "not json"),
        ]
        with urllib.request.urlopen(f"{sink.url}/_records", timeout=10) as response:  # noqa: S310
            assert [item["path"] for item in json.loads(response.read())] == ["/alerts", "/teams/x"]


def test_can_answer_with_an_error_status_to_exercise_retries():
    with WebhookSink() as sink:
        sink.respond_with(503)
        assert post(f"{sink.url}/alerts", b"{}") == 503
        sink.respond_with(200)
        assert post(f"{sink.url}/alerts", b"{}") == 200
        assert len(sink.records) == 2
        sink.clear()
        assert sink.records == []
