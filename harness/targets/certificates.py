"""Throwaway certificates for the managed TLS targets: a CA made for one server instance (trustme), a
server certificate for 127.0.0.1 and localhost, and a client certificate.

The CA file goes into the target file as ca_file, so the harness verifies the server like any other:
verification stays on. The key never leaves the instance's temp dir, which is removed with it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

SERVER_NAMES = ("127.0.0.1", "localhost")


@dataclass(frozen=True)
class CertFiles:
    ca: Path  # the CA certificate clients trust (ca_file)
    cert: Path  # the server certificate (leaf first, then the CA)
    key: Path  # its private key
    client_cert: Path  # a client certificate (with its key) the same CA signed
    directory: Path

    @classmethod
    def make(cls, directory: Path, names: tuple[str, ...] = SERVER_NAMES, *, expired: bool = False) -> CertFiles:
        """A fresh CA and certificates under `directory` (created). `expired`: the server certificate's validity
        ended yesterday (for testing that clients refuse it)."""
        import trustme  # with cryptography, a tenth of a second: only for a server that serves TLS

        directory.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA(organization_name="mailharness throwaway CA")
        dates = {}
        if expired:
            now = datetime.datetime.now(datetime.timezone.utc)
            dates = {"not_before": now - datetime.timedelta(days=30), "not_after": now - datetime.timedelta(days=1)}
        server = ca.issue_cert(*names, **dates)
        client = ca.issue_cert("mailharness-client@localhost", common_name="mailharness client")
        files = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "client.pem",
                    directory)
        ca.cert_pem.write_to_path(str(files.ca))
        with open(files.cert, "wb") as out:
            for blob in server.cert_chain_pems:
                out.write(blob.bytes())
        server.private_key_pem.write_to_path(str(files.key))
        with open(files.client_cert, "wb") as out:
            out.write(client.private_key_pem.bytes() + client.cert_chain_pems[0].bytes())
        for path in (files.key, files.client_cert):
            path.chmod(0o600)
        return files

    @classmethod
    def self_signed(cls, directory: Path) -> CertFiles:
        """A server certificate that is its own issuer (a lone CA certificate): no client trusts it."""
        import trustme

        directory.mkdir(parents=True, exist_ok=True)
        lone = trustme.CA(organization_name="mailharness self-signed")
        files = cls(directory / "ca.pem", directory / "server.pem", directory / "server.key", directory / "client.pem",
                    directory)
        other = trustme.CA()  # what a client would be told to trust: not the server's issuer
        other.cert_pem.write_to_path(str(files.ca))
        lone.cert_pem.write_to_path(str(files.cert))
        lone.private_key_pem.write_to_path(str(files.key))
        files.key.chmod(0o600)
        return files
