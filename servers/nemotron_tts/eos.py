"""NeMo's end-of-speech check with one device copy per decoder step instead of a wait per item.

Every decoder step ``MagpieTTSModel._check_eos_and_update_state`` asks each item in turn whether its
new frames end its speech: ``detect_eos`` compares and reduces the item's codes on the device, and
``if tensor.any()`` waits for the GPU, once for each of the argmax and the sampled codes with the
default method. That is a sync and a handful of launches per item per step, hundreds a step at 128
streams. Here every item's first end frame is found in one pass over the batch and copied to the
host once; the bookkeeping after it is NeMo 3.0's, line by line (tested against it), without its
log line per ending item.
"""

from __future__ import annotations

import torch


def end_frames(model, codes: torch.Tensor, argmax: torch.Tensor, method) -> list[float]:
    """Each item's first frame (within its frame stack) that ends speech, or ``inf``: what NeMo's
    ``detect_eos(codes[i], argmax[i], method)`` returns for every row ``i``."""
    from nemo.collections.tts.modules.magpietts_modules import EOSDetectionMethod

    sampling = EOSDetectionMethod.sampling_type(method)
    detection = EOSDetectionMethod.detection_type(method)
    sources = [argmax] if sampling == "argmax" else [argmax, codes]
    ending = None
    for source in sources:
        mask = source == model.audio_eos_id  # (items, codebooks, frames)
        if detection == "any":
            frames = mask.any(dim=1)
        elif detection == "all":
            frames = mask.all(dim=1)
        else:  # zero_cb: the first codebook decides
            frames = mask[:, 0]
        ending = frames if ending is None else ending | frames
    return [row.index(True) if True in row else float("inf") for row in ending.cpu().tolist()]


def check_eos_and_update_state(model, chunk_state, audio_codes_next, all_codes_next_argmax, chunk_end_dict,
                               chunk_end_frame_lens, finished_texts_counter, end_of_text,
                               eos_detection_method, current_step, batch_size) -> None:
    """``MagpieTTSModel._check_eos_and_update_state``, with the ends found by ``end_frames``."""
    pending = [item for item in range(batch_size)
               if item not in chunk_state.end_indices and item not in chunk_end_dict]
    if not pending:
        return
    ends = end_frames(model, audio_codes_next[:batch_size], all_codes_next_argmax[:batch_size],
                      eos_detection_method)
    forceful = model.chunked_inference_config.forceful_chunk_end_threshold
    for item in pending:
        end_frame_index = ends[item]
        if end_frame_index != float("inf"):
            chunk_end_frame_lens[item] = current_step * model.frame_stacking_factor + end_frame_index
            chunk_end_dict[item] = current_step  # this chunk's speech ends here
            if end_of_text[item]:  # and with it the whole text's
                chunk_state.end_indices[item] = chunk_state.overall_idx
        elif not end_of_text[item] and finished_texts_counter.get(item, -1) >= forceful:
            chunk_end_dict[item] = current_step
            chunk_end_frame_lens[item] = (current_step + 1) * model.frame_stacking_factor
