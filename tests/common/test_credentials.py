"""Derived credentials and redacted Redis URLs."""

from __future__ import annotations

import pytest

from services.common.credentials import (
    container_token,
    replica_credential,
    selection_token,
    sha256_hex,
    token_model,
    verify_container_token,
)
from services.common.redis_url import redact_url

SECRET = "a-mesh-secret-of-tests"


@pytest.mark.parametrize("model", ["digits", "a.b:c/d", "ünïcode", "x" * 128])
def test_a_container_token_names_and_proves_its_model(model: str) -> None:
    token = container_token(SECRET, model)
    assert token_model(token) == model
    assert verify_container_token(SECRET, token) == model
    assert verify_container_token("another-mesh-secret", token) is None


def test_a_token_cannot_be_moved_to_another_model() -> None:
    prefix, _, mac = container_token(SECRET, "alpha").split(".")
    beta_part = container_token(SECRET, "beta").split(".")[1]
    assert verify_container_token(SECRET, f"{prefix}.{beta_part}.{mac}") is None


@pytest.mark.parametrize("token", ["", "shared-token-of-old", "clipper-ct1..abc",
                                   "clipper-ct1.%%%.abc", "clipper-ct1.YQ"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError):
        token_model(token)
    assert verify_container_token(SECRET, token) is None


def test_credentials_are_scoped_and_distinct() -> None:
    alpha, beta = container_token(SECRET, "alpha"), container_token(SECRET, "beta")
    creds = {replica_credential(alpha, "r1"), replica_credential(alpha, "r2"),
             replica_credential(beta, "r1"), selection_token(SECRET), alpha, beta}
    assert len(creds) == 6
    assert replica_credential(alpha, "r1") == replica_credential(alpha, "r1")
    assert len(sha256_hex("key")) == 64


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:pw@h:6379/0", "redis://:***@h:6379/0"),
    ("redis://user:p%40ss@h/1", "redis://user:***@h/1"),
    ("rediss://u:pw@h:6380/2?ssl_ca_certs=/ca.pem", "rediss://u:***@h:6380/2?ssl_ca_certs=/ca.pem"),
    ("redis://h:6379/0", "redis://h:6379/0"),
    ("unix:///run/redis.sock", "unix:///run/redis.sock"),
])
def test_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown
