"""A container starts only with the token of the model it serves."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError
from services.common.credentials import container_token
from services.model_container.config import config_from_args, configs_from_args

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


def test_several_models_each_with_its_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", ",".join(
        container_token("a-mesh-secret-xyz", name) for name in ("alpha", "beta")))
    configs = configs_from_args([*ARGS, "--port", "7001", "--and",
                                 "--model", "tests.helpers.models:Twice", "--name", "beta"])
    assert [(c.name, c.source.ref) for c in configs] == [
        ("alpha", "tests.helpers.models:SumModel"), ("beta", "tests.helpers.models:Twice")]
    assert configs[0].token != configs[1].token
    assert configs[0].port == 7001  # the process's own settings: the first model's flags


def test_a_model_without_its_token_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", ",".join(
        container_token("a-mesh-secret-xyz", name) for name in ("alpha", "gamma")))
    with pytest.raises(ConfigError, match="holds the tokens of models 'alpha', 'gamma', "
                                          "none of --name 'beta'"):
        configs_from_args([*ARGS, "--and", "--model", "tests.helpers.models:Twice",
                           "--name", "beta"])


def test_one_model_version_served_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", container_token("a-mesh-secret-xyz", "alpha"))
    with pytest.raises(ConfigError, match="alpha:1 given twice"):
        configs_from_args([*ARGS, "--and", *ARGS])


def test_a_later_model_cannot_set_the_process_own_settings(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", ",".join(
        container_token("a-mesh-secret-xyz", name) for name in ("alpha", "beta")))
    beta = ["--model", "tests.helpers.models:Twice", "--name", "beta"]
    for flags in (["--metrics-port", "9999"], ["--grace-s=10"], ["--native-threads", "2"]):
        with pytest.raises(ConfigError, match=f"{flags[0].partition('=')[0]} \\(given with "
                                              "model 'beta'\\) set the process's own"):
            configs_from_args([*ARGS, "--and", *beta, *flags])
    assert configs_from_args([*ARGS, "--metrics-port", "9999", "--and", *beta])[
        0].metrics_port == 9999


def test_each_model_of_a_process_has_its_own_replica_id(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", ",".join(
        container_token("a-mesh-secret-xyz", name) for name in ("alpha", "beta")))
    monkeypatch.setenv("CLIPPER_CONTAINER_REPLICA_ID", "r1")
    beta = ["--model", "tests.helpers.models:Twice", "--name", "beta"]
    with pytest.raises(ConfigError, match="give each its own --replica-id"):
        configs_from_args([*ARGS, "--and", *beta])
    ids = [c.replica_id for c in configs_from_args([*ARGS, "--and", *beta,
                                                    "--replica-id", "r2"])]
    assert ids == ["r1", "r2"]


@pytest.mark.parametrize(("tokens", "needle"), [
    (",,", "holds no token"),
    ("{a},{a}", "two tokens of model 'alpha'"),
])
def test_malformed_token_lists(monkeypatch: pytest.MonkeyPatch, tokens: str,
                               needle: str) -> None:
    a = container_token("a-mesh-secret-xyz", "alpha")
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", tokens.format(a=a))
    with pytest.raises(ConfigError, match=needle):
        config_from_args(ARGS)
