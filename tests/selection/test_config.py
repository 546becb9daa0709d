"""The selection service starts only with the token frontends call it with."""

from __future__ import annotations

import pytest

from services.common.config import ConfigError
from services.selection.config import config_from_args


def test_the_selection_token_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CLIPPER_SELECTION_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="tokens selection"):
        config_from_args([])
    monkeypatch.setenv("CLIPPER_SELECTION_TOKEN", "a-selection-token")
    assert config_from_args([]).token == "a-selection-token"
