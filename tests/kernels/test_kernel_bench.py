"""kernels/bench.py: one clear line without a GPU; every case's code path runs in --smoke on CPU."""

from __future__ import annotations

import pytest
import torch

from kernels import bench


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown where no GPU is present")
def test_without_cuda_one_line_and_exit_1(capsys):
    assert bench.main([]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and "no CUDA device" in captured.err


def test_smoke_runs_every_kernel_case(capsys):
    assert bench.main(["--smoke"]) == 0
    out = capsys.readouterr().out
    assert "not timings" in out
    for name in bench.BENCHES:
        assert f"### {name}\n" in out
    assert out.count("| tiny ") == 2 + 2 + 2 + 2 + 2


def test_unknown_kernel_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--kernels", "decode,nope"])
    assert exit_info.value.code == 2
    assert "unknown kernels: nope" in capsys.readouterr().err
