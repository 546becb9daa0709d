"""Certificates made at test time: a CA, a server and a client certificate it signs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.tls import ClientTLS
from services.mesh.certs import CertFiles, make_ca, make_leaf


@dataclass(frozen=True)
class Pki:
    """A throwaway CA with one server certificate (127.0.0.1, localhost) and one client."""

    ca: CertFiles
    server: CertFiles
    client: CertFiles

    def serve(self, mtls: bool = False) -> list[str]:
        """Flags that make a service serve TLS (mTLS: requiring certificates of this CA)."""
        flags = ["--tls-cert", str(self.server.cert), "--tls-key", str(self.server.key)]
        return flags + (["--tls-client-ca", str(self.ca.cert)] if mtls else [])

    def dial(self, mtls: bool = False) -> list[str]:
        """Flags that make a service dial with TLS (mTLS: presenting the client certificate)."""
        flags = ["--tls-ca", str(self.ca.cert)]
        if mtls:
            flags += ["--tls-client-cert", str(self.client.cert),
                      "--tls-client-key", str(self.client.key)]
        return flags

    def client_tls(self, mtls: bool = False, server_name: str = "") -> ClientTLS:
        if mtls:
            return ClientTLS(str(self.ca.cert), str(self.client.cert), str(self.client.key),
                             server_name)
        return ClientTLS(str(self.ca.cert), server_name=server_name)


def make_pki(directory: Path, name: str = "ca",
             server_names: tuple[str, ...] = ("localhost", "127.0.0.1")) -> Pki:
    """A new CA `name` in `directory`, with its server and client certificates."""
    ca = make_ca(directory, name)
    return Pki(ca, make_leaf(directory, f"{name}-server", ca, server_names),
               make_leaf(directory, f"{name}-client", ca, ("clipper-test-client",)))
