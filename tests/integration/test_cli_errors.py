"""`cmkctl` as an operator meets failures: one line that names the cause, the same exit status everywhere
(2 bad input or no login, 3 a service that cannot be reached), `--json` still one document, no SDK noise."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import ServiceRequestError
from urllib3.connection import HTTPSConnection
from urllib3.exceptions import NameResolutionError

from controller.adapters.azure_errors import translated
from controller.errors import Unreachable
from emulators.egress_proxy import EgressProxy
from emulators.eventgrid_topic import EventGridTopicEmulator
from emulators.identity_endpoint import ManagedIdentityEndpoint
from emulators.keyvault.ca import SandboxCA
from emulators.keyvault.credential import Principal
from tests.support.egress import proxy_settings

pytestmark = pytest.mark.integration

CMKCTL = Path(sys.executable).parent / "cmkctl"
CLIENT_ID = str(uuid.uuid4())


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cmkctl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("CMK_", "IDENTITY_", "AZURE_", "AzureWebJobs", "REQUESTS_CA", "SSL_CERT"))}
    base["PATH"] = str(CMKCTL.parent)  # no `az` on the path: the Azure CLI login is not available
    return subprocess.run([str(CMKCTL), *args], capture_output=True, text=True, timeout=120,  # noqa: S603
                          env={**base, **env}, check=False)


@pytest.fixture
def identity() -> Iterator[dict[str, str]]:
    """A managed identity the CLI can get tokens from, as on an Azure host (or the sandbox)."""
    with ManagedIdentityEndpoint({CLIENT_ID: Principal(oid=str(uuid.uuid4()))}, default_client_id=CLIENT_ID) as mi:
        yield {**mi.environ(), "AZURE_CLIENT_ID": CLIENT_ID}


def settings(arm: str, vault: str) -> dict[str, str]:
    return {"CMK_VAULTS": vault, "CMK_ARM_ENDPOINT": arm, "AzureWebJobsStorage": "UseDevelopmentStorage=true"}


def test_nobody_logged_in_says_what_was_tried_and_how_to_log_in(azurite):
    port = closed_port()
    done = cmkctl("reconcile", f"https://127.0.0.1:{port}", "k", "--json",
                  env=settings(f"https://127.0.0.1:{port}", f"https://127.0.0.1:{port}"))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "not logged in" in line and "the Azure CLI login" in line and "az login" in line
    assert json.loads(done.stdout)["kind"] == "NotAuthenticated"


def test_a_service_nothing_listens_on_is_unreachable_at_once(identity):
    port = closed_port()
    done = cmkctl("reconcile", f"https://127.0.0.1:{port}", "k", "--json",
                  env={**identity, **settings(f"https://127.0.0.1:{port}", f"https://127.0.0.1:{port}")})
    assert done.returncode == 3, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "connection refused" in line
    assert json.loads(done.stdout)["kind"] == "Unreachable"


def test_an_untrusted_certificate_is_named_as_a_tls_problem(identity, tmp_path):
    with EventGridTopicEmulator(SandboxCA(tmp_path / "other-ca")) as untrusted:  # any HTTPS server we do not trust
        origin = untrusted.endpoint.removesuffix("/api/events")
        done = cmkctl("reconcile", origin, "k", env={**identity, **settings(origin, origin)})
    assert done.returncode == 3, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "TLS" in line and "REQUESTS_CA_BUNDLE" in line


@pytest.mark.parametrize(("command", "host"), [
    (("rotate", "nosuch-kv", "k", "--json"), "nosuch-kv.vault.azure.net"),  # the vault, by its bare name
    (("audit", "--format", "json"), "api.loganalytics.io"),  # Log Analytics (the client's fixed host)
], ids=["vault", "log-analytics"])
def test_a_host_name_that_does_not_resolve_is_named_at_once(identity, command, host):
    """Through an HTTPS proxy the proxy resolves the names (the sandbox's knows only its own services: no DNS
    query ever leaves the machine); its answer for a name that does not resolve reaches the operator."""
    with EgressProxy() as proxy:
        done = cmkctl(*command, env={**identity, **proxy_settings(proxy), "CMK_VAULTS": "nosuch-kv.vault.azure.net",
                                     "CMK_LOG_ANALYTICS_WORKSPACE": str(uuid.uuid4()),
                                     "AzureWebJobsStorage": "UseDevelopmentStorage=true"})
        assert [refusal.target for refusal in proxy.refused][:1] == [f"{host}:443"]
    assert done.returncode == 3, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert f"DNS: {host} does not resolve" in line
    assert json.loads(done.stdout)["kind"] == "Unreachable"


def test_a_direct_connection_names_the_host_it_could_not_resolve():
    """Without a proxy the client resolves the name itself: urllib3's NameResolutionError, as azure-core's
    requests transport wraps it (built here: a real lookup would query the machine's DNS server)."""
    failure = NameResolutionError("contoso-kv.vault.azure.net", HTTPSConnection("contoso-kv.vault.azure.net"),
                                  socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    with pytest.raises(Unreachable) as unreachable, translated("get https://contoso-kv.vault.azure.net/keys/k"):
        raise ServiceRequestError(failure, error=failure)
    assert str(unreachable.value) == ("get https://contoso-kv.vault.azure.net/keys/k: "
                                      "DNS: contoso-kv.vault.azure.net does not resolve")


def test_an_http_endpoint_where_https_is_needed_is_bad_configuration_not_a_traceback():
    done = cmkctl("reconcile", "contoso-kv.vault.azure.net", "k",
                  env=settings("http://127.0.0.1:1", "contoso-kv.vault.azure.net"))
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "CMK_ARM_ENDPOINT" in line and "Traceback" not in done.stderr


class SilentServer:
    """Accepts connections and never answers: a service that hangs (the client waits on its read)."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._socket.getsockname()[1])
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.accepted.append(connection)

    def close(self) -> None:
        self._socket.close()
        for connection in self.accepted:
            connection.close()


def test_ctrl_c_while_a_service_hangs_stops_the_command_with_130_and_one_json_document(identity):
    silent = SilentServer()
    origin = f"https://127.0.0.1:{silent.port}"
    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("CMK_", "IDENTITY_", "AZURE_", "AzureWebJobs", "REQUESTS_CA", "SSL_CERT"))}
    command = subprocess.Popen(  # noqa: S603
        [str(CMKCTL), "reconcile", origin, "k", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env={**base, "PATH": str(CMKCTL.parent), **identity, **settings(origin, origin)})
    try:
        deadline = time.monotonic() + 60
        while not silent.accepted and command.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)  # until the command waits on the hanging service (not a timing assertion)
        assert silent.accepted and command.poll() is None, "the command never reached the hanging service"
        command.send_signal(signal.SIGINT)
        out, err = command.communicate(timeout=60)
    finally:
        command.kill()
        silent.close()
    assert command.returncode == 130
    assert err.strip().splitlines() == ["cmkctl: interrupted (work done so far is checkpointed)"]  # no traceback
    assert json.loads(out)["kind"] == "Interrupted"
