import re
import subprocess
import sys
from pathlib import Path

import pytest
from nemotron_asr.config import ASRConfig
from nemotron_common.config import ConfigError, load
from nemotron_common.model_files import resolve_model


def write(tmp_path, text):
    path = tmp_path / "nemotron.toml"
    path.write_text(text)
    return path


def test_layers_file_then_environment_then_flags(tmp_path):
    path = write(tmp_path, '[asr]\nmodel = "/m.nemo"\nport = 9000\nright_context = 6\n')
    config = load(ASRConfig, "asr", path=path, environ={"NEMOTRON_ASR_PORT": "9100"},
                  flags={"right_context": 13, "port": None})
    assert (config.model, config.port, config.right_context) == ("/m.nemo", 9100, 13)
    assert config.host == "127.0.0.1"


@pytest.mark.parametrize("toml, environ, message", [
    ('[asr]\nmodel = "/m"\nport = 70000\n', {}, "[asr] port = 70000: must be a TCP port"),
    ('[asr]\nmodel = "/m"\nright_context = 2\n', {}, "right_context = 2: must be one of 0, 1, 6, 13"),
    ('[asr]\nmodel = "/m"\nprot = 1\n', {}, "unknown setting [asr] prot"),
    ('[asr]\nmodel = "/m"\n', {"NEMOTRON_ASR_PORT": "eighty"},
     "NEMOTRON_ASR_PORT: 'eighty' is not a valid int"),
    ('[asr]\nport = 8080\n', {}, "model is not set"),
    ('[asr\n', {}, "is not valid TOML"),
    ('[asr]\nmodel = "/m"\ncuda_graphs = "maybe"\n', {}, "cuda_graphs: 'maybe' is not a valid bool"),
])
def test_bad_settings_name_the_setting(tmp_path, toml, environ, message):
    with pytest.raises(ConfigError, match=None) as error:
        load(ASRConfig, "asr", path=write(tmp_path, toml), environ=environ)
    assert message in str(error.value)


def test_named_config_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(ASRConfig, "asr", path=tmp_path / "missing.toml", environ={})


def test_missing_default_file_is_fine(monkeypatch, tmp_path):
    monkeypatch.delenv("NEMOTRON_CONFIG", raising=False)
    monkeypatch.setattr("nemotron_common.config.DEFAULT_CONFIG_PATH", tmp_path / "none.toml")
    config = load(ASRConfig, "asr", environ={"NEMOTRON_ASR_MODEL": "/m.nemo"})
    assert config.model == "/m.nemo"


def test_model_resolution_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model(str(tmp_path / "absent.nemo"))
    with pytest.raises(ValueError, match="not in the local Hugging Face cache"):
        resolve_model("nvidia/nemotron-speech-streaming-en-0.6b", str(tmp_path))


def test_model_found_in_hugging_face_cache_layout(tmp_path):
    snapshot = tmp_path / "models--nvidia--asr" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "asr.nemo").write_bytes(b"x")
    refs = tmp_path / "models--nvidia--asr" / "refs"
    refs.mkdir()
    (refs / "main").write_text("abc123")
    assert resolve_model("nvidia/asr", str(tmp_path)) == snapshot / "asr.nemo"


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "nemotron_asr", *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_cli_exits_78_with_one_line_naming_the_problem(tmp_path):
    result = run_cli("--model", str(tmp_path / "absent.nemo"))
    assert result.returncode == 78
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "absent.nemo does not exist" in lines[0]


def test_cli_bad_flag_value_exits_78(tmp_path):
    result = run_cli("--model", "/m.nemo", "--port", "0")
    assert result.returncode == 78
    assert "port = 0" in result.stderr


def test_journal_lines_carry_syslog_priority(tmp_path):
    import os

    env = {**os.environ, "JOURNAL_STREAM": "8:12345"}
    result = run_cli("--model", str(tmp_path / "absent.nemo"), env=env)
    assert result.returncode == 78
    line = result.stderr.strip()
    assert re.match(r"<3>\S+: configuration error: model file .*absent.nemo does not exist$", line), line
    assert "20" not in line.split(":")[0]  # no timestamp: journald keeps time


def test_help_lists_every_setting():
    result = run_cli("--help")
    assert result.returncode == 0
    for flag in ("--model", "--right-context", "--max-sessions", "--cuda-graphs / --no-cuda-graphs",
                 "--drain-timeout", "--config"):
        assert flag in result.stdout


def test_a_warmup_text_the_server_would_refuse_is_a_bad_setting(tmp_path):
    """Found by the speech fuzz test: a low max_text_chars refused the server's own warmup text."""
    from nemotron_tts.config import TTSConfig

    with pytest.raises(ConfigError, match="warmup_text has 83 characters, more than max_text_chars = 60"):
        load(TTSConfig, "tts", path=write(tmp_path, '[tts]\nmodel = "/m"\nmax_text_chars = 60\n'))


def test_the_configuration_page_is_generated_from_the_schemas():
    """docs/configuration.md is what docs/configuration.py prints: a new or changed setting without
    the regenerated page fails here."""
    root = Path(__file__).resolve().parents[2]
    generated = subprocess.run([sys.executable, str(root / "docs/configuration.py")], capture_output=True,
                               text=True, check=True).stdout
    assert (root / "docs/configuration.md").read_text() == generated, \
        "run: python docs/configuration.py > docs/configuration.md"
