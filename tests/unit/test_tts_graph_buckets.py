"""Which CUDA-graph buckets the TTS engine captures: every decoder row count a configured batch can
reach has one (CFG doubles the rows), so no step of a full batch runs eagerly."""

import pytest
from nemotron_tts.graphs import bucket_for, buckets_up_to


@pytest.mark.parametrize("max_batch", [1, 4, 16, 64, 128, 256])
def test_every_row_count_of_a_power_of_two_batch_has_a_captured_bucket(max_batch):
    for rows_per_segment in (1, 2):  # without and with CFG
        max_rows = max_batch * rows_per_segment
        captured = buckets_up_to(max_rows)
        assert captured == sorted(captured, reverse=True)  # largest first: smaller ones reuse its pool
        for rows in range(1, max_rows + 1):
            assert bucket_for(rows) in captured


def test_a_row_count_past_the_largest_bucket_has_none():
    assert bucket_for(512) == 512 and bucket_for(513) is None
