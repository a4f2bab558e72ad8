"""A stage's peak memory is its own: the trainer resets the process's peak resident memory when a stage starts."""

from twots.training.trainer import peak_rss_mb, reset_peak_rss

MB = 2**20


def test_peak_rss_is_reset_to_the_current_size():
    before = peak_rss_mb()
    block = bytearray(300 * MB)
    block[::4096] = b"x" * len(block[::4096])  # touch every page: resident, not only reserved
    assert peak_rss_mb() >= before + 250
    del block
    reset_peak_rss()
    assert peak_rss_mb() < before + 100  # the 300 MB freed no longer count
