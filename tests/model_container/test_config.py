"""A container starts only with the token of the model it serves."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError
from services.common.credentials import container_token
from services.model_container.config import config_from_args

ARGS = ["--model", "tests.helpers.models:SumModel", "--name", "alpha"]


def test_the_token_of_its_own_model_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", container_token("a-mesh-secret-xyz", "alpha"))
    assert config_from_args(ARGS).name == "alpha"


@pytest.mark.parametrize(("token", "needle"), [
    ("", "must be set"),
    ("the-shared-token-of-older-versions", "no longer accepted"),
    (container_token("a-mesh-secret-xyz", "beta"), "token of model 'beta'"),
])
def test_other_tokens_fail_fast(monkeypatch: pytest.MonkeyPatch, token: str,
                                needle: str) -> None:
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", token)
    with pytest.raises(ConfigError, match=needle):
        config_from_args(ARGS)
