"""The cache-size estimate reproduces DeepSpec's 30,726 B/token for Qwen3-4B and lists every mode."""

from specserve.data.estimate import estimate_modes, format_estimate, human_bytes


def test_qwen3_4b_estimate():
    tokens = 1_240_000_000  # DeepSpec's data set
    rows = estimate_modes(2560, 5, tokens)
    by_mode = {r.mode: r for r in rows}
    assert by_mode["deepspec (reference)"].bytes_per_token == 30_726
    assert human_bytes(by_mode["deepspec (reference)"].total_bytes) == "38.1 TB"  # the "about 38 TB"
    assert by_mode["taps=fp8,final=bf16"].bytes_per_token == 17_945
    assert by_mode["taps=fp8,final=none"].vs_deepspec < 0.42
    assert len(rows) == 13
    text = format_estimate(rows, 2560, 5, tokens)
    assert "30,726" in text and "12,825" in text and "taps=fp8,final=fp8" in text
