"""A TLS scan of the running gateway with sslyze: protocols, ciphers, compression, renegotiation."""

from __future__ import annotations

import pytest

sslyze = pytest.importorskip("sslyze")

from sslyze import (  # noqa: E402
    ScanCommand,
    Scanner,
    ServerNetworkLocation,
    ServerScanRequest,
    ServerScanStatusEnum,
)

# Mozilla's "intermediate" profile (server-side TLS guidelines, version 5.7), in
# OpenSSL names, for TLS 1.2; every TLS 1.3 suite is acceptable.
MOZILLA_INTERMEDIATE_TLS12 = {
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-RSA-CHACHA20-POLY1305",
    "DHE-RSA-AES128-GCM-SHA256",
    "DHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-CHACHA20-POLY1305",
}

COMMANDS = {
    ScanCommand.SSL_2_0_CIPHER_SUITES,
    ScanCommand.SSL_3_0_CIPHER_SUITES,
    ScanCommand.TLS_1_0_CIPHER_SUITES,
    ScanCommand.TLS_1_1_CIPHER_SUITES,
    ScanCommand.TLS_1_2_CIPHER_SUITES,
    ScanCommand.TLS_1_3_CIPHER_SUITES,
    ScanCommand.TLS_COMPRESSION,
    ScanCommand.SESSION_RENEGOTIATION,
}


@pytest.fixture(scope="module")
def scan(gateway_process):
    location = ServerNetworkLocation(hostname="localhost", port=gateway_process.port, ip_address="127.0.0.1")
    scanner = Scanner()
    scanner.queue_scans([ServerScanRequest(server_location=location, scan_commands=COMMANDS)])
    (result,) = list(scanner.get_results())
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    return result.scan_result


def accepted(attempt) -> list[str]:
    assert attempt.status.name == "COMPLETED", attempt.error_trace
    return [suite.cipher_suite.openssl_name for suite in attempt.result.accepted_cipher_suites]


@pytest.mark.parametrize("name", ["ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"])
def test_old_protocols_refused(scan, name):
    assert accepted(getattr(scan, name)) == []


def test_tls12_ciphers_within_mozilla_intermediate(scan):
    suites = accepted(scan.tls_1_2_cipher_suites)
    assert suites, "TLS 1.2 must be offered"
    assert set(suites) <= MOZILLA_INTERMEDIATE_TLS12


def test_tls13_offered(scan):
    assert accepted(scan.tls_1_3_cipher_suites)


def test_no_compression(scan):
    assert scan.tls_compression.status.name == "COMPLETED"
    assert scan.tls_compression.result.supports_compression is False


def test_secure_renegotiation(scan):
    attempt = scan.session_renegotiation
    assert attempt.status.name == "COMPLETED", attempt.error_trace
    assert attempt.result.is_vulnerable_to_client_renegotiation_dos is False
    assert attempt.result.supports_secure_renegotiation is True
