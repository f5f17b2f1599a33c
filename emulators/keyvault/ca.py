"""The sandbox certificate authority: one locally generated CA, server certificates per 127.0.0.x host.

Clients trust the sandbox by passing ``connection_verify=<ca_path>`` (azure-core / requests) or
``ssl.create_default_context(cafile=ca_path)``.
"""

from __future__ import annotations

import ssl
import threading
from pathlib import Path

import trustme

from emulators.files import write_file


class SandboxCA:
    """A CA for the sandbox. With ``persist=True`` the CA key is kept in ``<directory>/ca-key.pem`` and
    reused by later runs, so clients configured with ``<directory>/ca.pem`` keep working across restarts."""

    def __init__(self, directory: str | Path, *, persist: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_path = self.directory / "ca.pem"
        key_path = self.directory / "ca-key.pem"
        if persist and self.ca_path.is_file() and key_path.is_file():
            self._ca = trustme.CA.from_pem(self.ca_path.read_bytes(), key_path.read_bytes())
        else:
            self._ca = trustme.CA(organization_name="cmk-controller sandbox")
            self._ca.cert_pem.write_to_path(str(self.ca_path))
            if persist:
                write_file(key_path, self._ca.private_key_pem.bytes().decode())
        self._lock = threading.Lock()
        self._certs: dict[tuple[str, ...], trustme.LeafCert] = {}

    def _leaf(self, hosts: tuple[str, ...]) -> trustme.LeafCert:
        key = tuple(sorted(set(hosts) | {"127.0.0.1", "localhost"}))
        with self._lock:
            if key not in self._certs:
                self._certs[key] = self._ca.issue_cert(*key)
            return self._certs[key]

    def server_ssl_context(self, *hosts: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._leaf(hosts).configure_cert(ctx)
        return ctx

    def write_server_cert(self, name: str, *hosts: str) -> tuple[Path, Path]:
        """Write a server certificate chain and key (PEM) for other emulators (e.g. Azurite --cert/--key)."""
        leaf = self._leaf(hosts)
        cert_path = self.directory / f"{name}.crt.pem"
        key_path = self.directory / f"{name}.key.pem"
        leaf.cert_chain_pems[0].write_to_path(str(cert_path))
        for extra in leaf.cert_chain_pems[1:]:
            extra.write_to_path(str(cert_path), append=True)
        leaf.private_key_pem.write_to_path(str(key_path))
        return cert_path, key_path

    def client_ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_path))
