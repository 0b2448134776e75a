"""The access rules on their own: where the key comes from and what a request must carry."""

import pytest
from nemotron_common.access import Access, read_api_key
from nemotron_common.config import ConfigError


def test_the_key_comes_from_the_setting_then_the_systemd_credential(tmp_path, monkeypatch):
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert read_api_key("") is None  # open, as before
    (tmp_path / "api-key").write_text("from-systemd\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert read_api_key("") == "from-systemd"
    (tmp_path / "own").write_text("  from-setting  ")
    assert read_api_key(str(tmp_path / "own")) == "from-setting"


@pytest.mark.parametrize("content", ["", "  \n", "two words"])
def test_a_key_file_that_holds_no_single_key_is_a_setting_error(tmp_path, content):
    (tmp_path / "key").write_text(content)
    with pytest.raises(ConfigError, match="api_key_file"):
        read_api_key(str(tmp_path / "key"))
    with pytest.raises(ConfigError, match="cannot read"):
        read_api_key(str(tmp_path / "missing"))


def test_requests_are_checked_for_key_and_origin():
    access = Access("secret", frozenset({"https://app.example"}))
    assert access.refusal({"Authorization": "Bearer secret"}) is None
    assert access.refusal({"Authorization": "bearer  secret"}) is None
    assert access.refusal({})[0] == 401
    assert access.refusal({"Authorization": "Bearer secre"})[0] == 401
    assert access.refusal({"Authorization": "Basic secret"})[0] == 401
    assert access.refusal({"Authorization": "Bearer secret", "Origin": "https://app.example/"}) is None
    assert access.refusal({"Authorization": "Bearer secret", "Origin": "https://other.example"})[0] == 403
    assert Access().refusal({}) is None and Access().refusal({"Origin": "null"})[0] == 403
    assert Access(origins=frozenset({"*"})).refusal({"Origin": "https://any.example"}) is None
