"""Which CUDA-graph buckets the TTS engine captures: every row count a configured batch can reach
has one (CFG doubles the decoder's rows), so no step of a full batch runs eagerly."""

import pytest
from nemotron_tts.graphs import BUCKETS, GraphPool, bucket_for, buckets_up_to


@pytest.mark.parametrize("max_batch", [1, 4, 16, 24, 64, 100, 128, 256, 300])
def test_every_row_count_up_to_the_configured_batch_has_a_captured_bucket(max_batch):
    for rows_per_segment in (1, 2):  # without and with CFG
        max_rows = max_batch * rows_per_segment
        captured = buckets_up_to(max_rows)
        assert captured == sorted(captured, reverse=True)  # largest first: smaller ones reuse its pool
        assert max(captured) == max_rows  # no graph larger than the buffers it reads
        for rows in range(1, max_rows + 1):
            assert bucket_for(rows, max_rows) in captured


def test_rows_are_padded_to_the_next_bucket_or_the_configured_most():
    assert [bucket_for(n) for n in (1, 3, 64, 65, 256, 512)] == [1, 4, 64, 128, 256, 512]
    assert bucket_for(513) is None and bucket_for(600, 700) == 700
    assert bucket_for(33, 48) == 48 and bucket_for(32, 48) == 32
    assert buckets_up_to(48) == [48, *reversed(BUCKETS[:6])]


def test_a_graph_pool_pads_calls_to_the_buckets_it_was_captured_for():
    """The samplers and the codec ask their pool: once it has captured for 24 rows, 17-24 rows
    replay the 24-row graph rather than a 32-row one it never captured."""
    pool = GraphPool()
    assert pool.bucket(20) == 32  # nothing captured yet: the power of two
    assert pool.buckets(24) == [24, 16, 8, 4, 2, 1]
    assert [pool.bucket(n) for n in (1, 16, 17, 24, 25)] == [1, 16, 24, 24, 32]
