"""The frontend starts only with its credentials, and takes Redis URLs with passwords."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError
from services.frontend.config import config_from_args


@pytest.fixture(autouse=True)
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLIPPER_MANAGEMENT_TOKEN", "a-management-token")
    monkeypatch.setenv("CLIPPER_MESH_SECRET", "a-mesh-secret-of-16+")


@pytest.mark.parametrize("secret", ["", "too-short"])
def test_a_mesh_secret_is_required(monkeypatch: pytest.MonkeyPatch, secret: str) -> None:
    monkeypatch.setenv("CLIPPER_MESH_SECRET", secret)
    monkeypatch.setenv("CLIPPER_CONTAINER_TOKEN", "the-shared-token-of-older-versions")
    with pytest.raises(ConfigError, match=r"CLIPPER_MESH_SECRET .* replaces CLIPPER_CONTAINER"):
        config_from_args([])


@pytest.mark.parametrize("cache", ["redis://:pw@h:6379/2", "redis://user:pw@h/2",
                                   "rediss://user:pw@h:6380/2?ssl_ca_certs=/ca.pem"])
def test_cache_urls_may_carry_credentials_and_tls(cache: str) -> None:
    assert config_from_args(["--cache", cache]).cache == cache


def test_a_bad_cache_url_is_refused_without_its_password() -> None:
    with pytest.raises(ConfigError) as err:
        config_from_args(["--cache", "memcached://user:hunter2@h"])
    assert "hunter2" not in str(err.value) and "***" in str(err.value)


def test_several_workers_need_a_shared_state_store() -> None:
    with pytest.raises(ConfigError, match=r"--workers=2 needs a shared state store.*embedded"):
        config_from_args(["--workers", "2", "--cache", "none"])


@pytest.mark.parametrize("cache", ["memory", "redis://h:6379/1", "none"])
def test_several_workers_need_a_shared_cache_or_none(cache: str) -> None:
    argv = ["--workers", "2", "--state", "redis://h:6379/0", "--cache", cache]
    if cache == "memory":
        with pytest.raises(ConfigError, match=r"--workers=2 needs --cache none or a shared"):
            config_from_args(argv)
    else:
        assert config_from_args(argv).workers == 2


def test_one_worker_keeps_the_embedded_store_and_memory_cache() -> None:
    cfg = config_from_args([])
    assert (cfg.workers, cfg.cache, cfg.reuse_port) == (1, "memory", False)


def test_workers_are_counted_from_one() -> None:
    with pytest.raises(ConfigError, match=r"--workers=0: must be > 0"):
        config_from_args(["--workers", "0"])
