"""The llama.cpp server patch on the two shapes of update_slots it meets (anchor lines only)."""

import pytest
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
