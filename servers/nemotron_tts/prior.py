"""NeMo's attention-prior bookkeeping with one device copy per step instead of one per item.

Every decoder step, ``MagpieTTSModel`` finds the text position each item attends to and builds the
next step's attention prior, item by item: an ``.item()`` (a GPU sync) and several one-element
writes (kernel launches) per item, about 12 ms per step at batch 32 on an H200. These replacements
compute the same values on the host from one copy of the scores and lengths, for all items at once
in numpy (item by item in Python they still took milliseconds a step at 128 items), and send the
prior back in one copy. Semantics follow ``get_most_attended_text_timestep`` and ``construct_inference_prior``
of NeMo 3.0 line by line (tested against them).
"""

from __future__ import annotations

import types

import numpy as np
import torch


def most_attended(model, alignment_attention_scores, last_attended_timesteps, text_lens,
                  lookahead_window_size, attended_timestep_counter, batch_size, left_offset=()):
    scores = alignment_attention_scores.detach().float().cpu().numpy()
    lens = np.asarray(text_lens.tolist()[:batch_size], dtype=np.int64)
    offsets = np.asarray(list(left_offset) or [0] * batch_size, dtype=np.int64)
    counters = attended_timestep_counter
    last = np.asarray([int(t) for t in last_attended_timesteps[-1][:batch_size]], dtype=np.int64)
    last += [counters[item].get(int(t), 0) >= 8 for item, t in enumerate(last)]  # attention sinks: move on
    start = last - offsets
    end = np.minimum(start + lookahead_window_size, lens - 3)  # the last 3 positions do not count
    # Each item's window [start, end) of its scores, all items at once; the first highest score wins,
    # as in torch's argmax of the window.
    columns = np.arange(scores.shape[1])
    inside = (columns >= start[:, None]) & (columns < end[:, None])
    best = np.where(inside, scores[:batch_size], -np.inf).argmax(axis=1)
    attended = np.where(inside.any(axis=1), best - start + last, lens - 1 + offsets).tolist()
    for item in np.flatnonzero((start < 0) | (end < 0)):  # Python's slices count these from the end
        window = scores[item, start[item]:end[item]]
        attended[item] = (int(lens[item] - 1 + offsets[item]) if window.size == 0
                          else int(window.argmax() + last[item]))
    for item, timestep in enumerate(attended):
        counters[item][timestep] = counters[item].get(timestep, 0) + 1
    return attended, counters


def inference_prior(model, prior_epsilon, cross_attention_scores, text_lens, text_time_step_attended,
                    attended_timestep_counter, unfinished_texts, finished_texts_counter, end_indices,
                    lookahead_window_size, batch_size):
    rows, width = cross_attention_scores.shape[0], cross_attention_scores.shape[1]
    items = min(rows, batch_size)
    epsilon = np.float32(prior_epsilon)
    prior = np.full((rows, width), epsilon, dtype=np.float32)
    lens = np.asarray(text_lens.tolist()[:items], dtype=np.int64)
    attended = np.asarray(text_time_step_attended[:items], dtype=np.int64)
    short = lens <= 5  # very short text: no prior
    prior[np.flatnonzero(short)] = 1.0
    ahead = np.minimum(attended[:, None] + np.arange(1, lookahead_window_size + 1), lens[:, None] - 1)
    marked = np.concatenate([np.maximum(1, attended - 1)[:, None], attended[:, None], ahead], axis=1)
    rest = np.flatnonzero(~short)
    prior[rest[:, None], marked[rest]] = 1.0
    for item in range(items):
        for timestep, count in attended_timestep_counter[item].items():
            if count >= 10:  # stuck on one position
                prior[item, : timestep + 1] = epsilon
        length, at = int(lens[item]), int(attended[item])
        unfinished_texts[item] = at < length - 3 and item not in end_indices
        if (at >= length - 2 or item in end_indices) and item not in finished_texts_counter:
            finished_texts_counter[item] = 0
    for item in finished_texts_counter:
        finished_texts_counter[item] += 1
        if finished_texts_counter[item] > 5:
            unfinished_texts[item] = False
    prior = torch.from_numpy(prior)[:, None]
    return prior.to(cross_attention_scores.device), unfinished_texts, finished_texts_counter


def install(model) -> None:
    model.get_most_attended_text_timestep = types.MethodType(most_attended, model)
    model.construct_inference_prior = types.MethodType(inference_prior, model)
