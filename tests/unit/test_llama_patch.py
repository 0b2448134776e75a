"""The llama.cpp server patch on the two shapes of update_slots it meets (anchor lines only)."""

from pathlib import Path

import pytest
from helpers.binaries import llama_server
from nemotron_install import llama_patch
from nemotron_install.llama_patch import PatchError, patch_text

# The lines the patch anchors on, as a December 2025 server-context.cpp (the pinned commit's era) has
# them, with a slot-clear that asserts an idle slot, and as later upstream sources do
# (prompt_clear(true), which llama-cpp-python 0.3.17-0.3.20 vendor).
WARNING = 'SLT_WRN(slot, "failed to truncate tokens with position >= %d - clearing the memory\\n", p0);'
TRUNCATE_OLD = f'''                    if (!llama_memory_seq_rm(llama_get_memory(ctx), slot.id, p0, -1)) {{
                        {WARNING}

                        clear_slot(slot);
'''
TRUNCATE_NEW = TRUNCATE_OLD.replace("clear_slot(slot);", "slot.prompt_clear(true);")
PROMPT_LOGITS = '''                        // [TAG_PROMPT_LOGITS]
                        if (n_past == slot.task->n_tokens() && n_past > 0) {
                            n_past--;
                        }

                        slot.n_prompt_tokens_cache     = n_past;
                        slot.n_prompt_tokens_processed = 0;

                        slot.prompt.tokens.keep_first(n_past);
                    }
'''


@pytest.mark.parametrize("truncate", [TRUNCATE_OLD, TRUNCATE_NEW], ids=["pinned", "later"])
def test_every_hazard_is_patched_once(truncate):
    source = "void update_slots() {\n" + PROMPT_LOGITS + truncate + "}\n"
    patched, report = patch_text(source)
    assert "clear_slot(slot);" not in patched
    cleared = "llama_memory_seq_rm(llama_get_memory(ctx), slot.id, -1, -1);" in patched
    assert cleared == (truncate == TRUNCATE_OLD)
    assert "n_past > 0 && slot.task->params.n_predict != 0) {" in patched
    done = patched.index("if (slot.task->params.n_predict == 0 && n_past == slot.task->n_tokens()) {")
    assert patched.index("slot.prompt.tokens.keep_first(n_past);") < done
    assert "send_final_response(slot);" in patched[done:] and "continue;" in patched[done:]
    assert len(report) == 3
    assert patch_text(patched) == (patched, ["already patched"])


def test_a_source_without_an_anchor_fails_loudly(tmp_path):
    source = "void update_slots() {\n" + TRUNCATE_OLD + "}\n"  # no [TAG_PROMPT_LOGITS] block
    with pytest.raises(PatchError, match="no-reevaluation-without-prediction"):
        patch_text(source)
    (tmp_path / "tools/server").mkdir(parents=True)
    (tmp_path / llama_patch.SERVER_SOURCE).write_text(source)
    with pytest.raises(PatchError):
        llama_patch.apply(tmp_path)
    assert (tmp_path / llama_patch.SERVER_SOURCE).read_text() == source  # nothing half-written
    with pytest.raises(PatchError, match="not found"):
        llama_patch.apply(tmp_path / "elsewhere")


# The pinned sdist's shape (llama.cpp build 11434): update_slots walks the slots with a lambda, the
# cached-token count moved into slot.stats, and memory that cannot drop a suffix is known up front
# (common_context_can_seq_rm) instead of failing and clearing a busy slot.
LAMBDA_SHAPE = '''    ctx_tgt_seq_rm_type = common_context_can_seq_rm(ctx_tgt);
            iterate(slots, [&](server_slot & slot) {
                        // [TAG_PROMPT_LOGITS]
                        if (n_past == slot.task->n_tokens() && n_past > 0) {
                            n_past--;
                        }

                        slot.stats.n_prompt_cached    = n_past;
                        slot.stats.n_prompt_processed = 0;

                        slot.prompt.tokens.keep_first(n_past);
                    }
            });
'''


def test_the_pinned_sdist_shape_is_patched_and_moves_on_with_return():
    patched, report = patch_text("void update_slots() {\n" + LAMBDA_SHAPE + "}\n")
    assert report[0] == "clear-on-failed-truncate: not needed, this source already does it"
    assert report[1:] == ["no-reevaluation-without-prediction: applied",
                          "cached-prompt-completes-at-once: applied"]
    done = patched[patched.index("if (slot.task->params.n_predict == 0 && n_past == slot.task->n_tokens())"):]
    assert "return;" in done.split("}")[0] and "continue;" not in patched  # a lambda cannot continue


def test_the_pinned_sdist_has_every_anchor():
    """The lock's own source as the llama-cpp step unpacked and patched it for this run's build."""
    source = Path(llama_server()).parents[2] / "src/llama.cpp" / llama_patch.SERVER_SOURCE
    assert llama_patch.MARK in source.read_text()  # patched by the step, edits as reported above
    assert source.read_text().count(llama_patch.MARK) == 2


def _tarball(path: Path, members: dict[str, bytes | str]) -> Path:
    """A tar.gz with regular files (bytes) and symlinks (str targets)."""
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize("with_filter", [True, False], ids=["data-filter", "python-3.11.2"])
def test_the_sdist_is_checked_and_unpacked_without_escaping_the_tree(tmp_path, monkeypatch, with_filter):
    import hashlib
    import tarfile
    from dataclasses import replace

    from nemotron_install import llama_source
    from nemotron_install.lock import load_lock

    if not with_filter:
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    source = "void update_slots() {\n" + LAMBDA_SHAPE + "}\n"
    good = _tarball(tmp_path / "good.tar.gz", {"pkg/llama.cpp/CMakeLists.txt": b"project(x)\n",
                                               f"pkg/llama.cpp/{llama_patch.SERVER_SOURCE}": source.encode()})
    pin = replace(load_lock().llama_cpp, sha256=hashlib.sha256(good.read_bytes()).hexdigest())
    llama_source.prepare(pin, tmp_path / "src", sdist=good, log=lambda line: None)
    assert llama_patch.MARK in (tmp_path / "src" / llama_patch.SERVER_SOURCE).read_text()
    with pytest.raises(llama_source.SourceError, match="is not the lock's"):
        llama_source.prepare(replace(pin, sha256="0" * 64), tmp_path / "src2", sdist=good, log=print)
    evil = _tarball(tmp_path / "evil.tar.gz",
                    {"pkg/llama.cpp/CMakeLists.txt": b"x", "pkg/escape": "../../etc"})
    evil_pin = replace(pin, sha256=hashlib.sha256(evil.read_bytes()).hexdigest())
    with pytest.raises((llama_source.SourceError, tarfile.TarError)):
        llama_source.prepare(evil_pin, tmp_path / "src3", sdist=evil, log=print)
    assert not (tmp_path / "src3").exists()
