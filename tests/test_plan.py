"""The choice of the cuda algorithm (kernels/cuda/plan.py), on modelled devices: no GPU needed."""

import itertools

import numpy as np

import pytest

pytest.importorskip("numba.cuda")
from gpurnn.kernels.cuda import plan
from gpurnn.kernels.cuda.plan import A100, H100, choose
from gpurnn.kernels.vocabulary import GATES

F32, F64 = 4, 8


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("H", [256, 512, 1024])
@pytest.mark.parametrize("B", [1, 8, 64])
def test_the_target_shapes_run_persistent_with_w_hh_on_chip_on_an_h100(cell, H, B):
    """B <= 64, H 256-1024, float32: the shapes the persistent kernels are for (without CUDA
    graphs; with them, from STEP_FROM_BATCH rows on, the step path: see the test below)."""
    p = choose(cell, F32, B, H, H100, "auto", graphs=False)
    assert p.algo == "persistent", p
    assert p.fwd_w_on_chip and p.bwd_w_on_chip, p
    assert p.blocks == min(H, H100.sms) or p.blocks == -(-H // p.units)
    assert p.blocks <= H100.sms and p.units * p.blocks >= H > p.units * (p.blocks - 1)
    assert p.fwd_shared + 4 * p.threads * GATES[cell] <= H100.smem_per_block


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
def test_with_graphs_auto_takes_the_step_path_from_step_from_batch_rows(cell):
    edge = plan.STEP_FROM_BATCH
    for B in (1, edge - 1):
        assert choose(cell, F32, B, 512, H100, "auto").algo == "persistent", B
    for B in (edge, 64, 256):
        p = choose(cell, F32, B, 512, H100, "auto")
        assert p.algo == "step" and f"B = {B}" in p.why and "graphs" in p.why, p
        assert choose(cell, F32, B, 512, H100, "auto", graphs=False).algo == "persistent", B
        assert choose(cell, F32, B, 512, H100, "persistent").algo == "persistent", B


def test_dw_hh_leaves_the_chip_before_w_hh_does():
    small, large = choose("lstm", F32, 8, 512, H100), choose("lstm", F32, 8, 1024, H100)
    assert small.bwd_w_on_chip and small.dw_on_chip
    assert large.bwd_w_on_chip and not large.dw_on_chip        # 8 units x 4100 floats x 2 > 227 KiB


def test_auto_takes_the_step_path_past_the_l2_and_forced_persistent_still_runs():
    p = choose("lstm", F32, 8, 2048, H100, "auto")     # W_hh = 64 MiB: neither on-chip nor in L2
    assert p.algo == "step" and "L2" in p.why, p
    forced = choose("lstm", F32, 8, 2048, H100, "persistent")
    assert forced.algo == "persistent" and not forced.fwd_w_on_chip and "although" in forced.why, forced
    assert choose("lstm", F32, 8, 256, H100, "step").algo == "step"


def test_forced_persistent_that_cannot_be_resident_says_why():
    tiny = plan.Device("a GPU with little shared memory", sms=2, smem_per_sm=2048, smem_per_block=2048,
                       l2_bytes=1 << 20)
    with pytest.raises(ValueError, match=r"algo='persistent' cannot run lstm with H=8, B=2: .*cannot all be "
                                         r"resident.*use algo='step' or 'auto'"):
        choose("lstm", F64, 2, 8, tiny, "persistent")           # 8 KiB of partial sums a block
    p = choose("lstm", F64, 2, 8, tiny, "auto")
    assert p.algo == "step" and "resident" in p.why


def test_unknown_algo():
    with pytest.raises(ValueError, match="unknown algo 'fast'; expected one of auto, persistent, step"):
        choose("lstm", F32, 8, 256, H100, "fast")


def test_the_driver_occupancy_decides_when_given():
    """On a GPU the co-residency comes from the driver: a grid it refuses is not planned."""
    def driver(kernel, threads, static, dyn):
        return 0 if dyn > 0 else 132        # e.g. the opt-in for large dynamic shared memory failed
    p = choose("lstm", F32, 8, 512, H100, "auto", cooperative_blocks=driver)
    assert p.algo == "persistent" and not (p.fwd_w_on_chip or p.bwd_w_on_chip or p.dw_on_chip)
    assert p.fwd_shared == p.bwd_shared == 0


def test_resident_blocks_follow_registers_threads_and_shared_memory():
    assert H100.resident_blocks(256, 0, 0, registers=128) == 2        # 64 K registers / (256 x 128)
    assert H100.resident_blocks(256, 0, 0, registers=32) == 8         # 2048 threads an SM
    assert H100.resident_blocks(256, 0, 100 * 1024, registers=32) == 2  # 228 KiB / (100 + 1) KiB
    assert H100.resident_blocks(256, 0, 228 * 1024, registers=32) == 0  # more than a block may have
    assert A100.resident_blocks(1024, 0, 0, registers=255) == 0        # 255 x 1024 registers: none


@pytest.mark.parametrize("units", [1, 2, 3, 5, 16, 64, 100, 1000])
@pytest.mark.parametrize("threads", [4, 256])
def test_split_gives_every_unit_its_threads_in_one_pass(units, threads):
    s = plan.split_for(units, threads)
    assert s & (s - 1) == 0 and 1 <= s <= threads and threads % s == 0
    assert s == 1 or s * units <= threads
    assert 2 * s * units > threads      # the largest such power of two


@pytest.mark.parametrize("split", [1, 2, 4, 8, 16, 32, 64, 256])
@pytest.mark.parametrize("length", [1, 7, 32, 100, 1024])
def test_padded_rows_put_a_warps_reads_in_distinct_banks(split, length):
    """A warp reads ``split`` consecutive words of 32 / split rows (float32), or 32 consecutive
    words of one row when split >= 32: all 32 banks differ."""
    stride = plan.padded(length, split)
    assert length <= stride < length + 64
    per_row = min(split, 32)
    banks = {(r * stride + k) % 32 for r, k in itertools.product(range(32 // per_row), range(per_row))}
    assert len(banks) == 32


def test_limits_on_the_modelled_h100():
    lim = plan.limits("lstm", F32, plan.with_registers(H100, 122))
    assert lim["largest_grid"] == 132
    assert 1024 <= lim["largest_hidden_w_on_chip"] <= lim["largest_hidden"] < 2048
    assert 512 <= lim["largest_hidden_dw_on_chip"] < 1024


def test_plan_describes_itself():
    assert choose("gru", F32, 8, 256, H100, "step").describe() == "step (asked for)"
    text = choose("gru", F32, 8, 256, H100).describe()
    assert text.startswith("persistent (128 blocks x 256 threads, 2 units a block; W_hh on-chip forward"), text


def test_the_report_models_the_step_kernels_with_the_block_they_launch():
    """The report's occupancy of a step kernel is for the (step_h, step_b, step_kz) block that
    step.step_launch launches: 256 threads by default. A float32 step_forward of 56 registers
    and 14336 bytes of static shared memory on an H100: 56·32 registers a warp, 8 warps a block,
    so 4 blocks (65536 // 14336) of 8 warps, 32 of 64 warps: 0.5 (a 64-thread block read 0.469)."""
    from gpurnn.kernels import report
    from gpurnn.kernels.cuda.runtime import GPU_GEOMETRY
    from gpurnn.kernels.cuda.step import step_launch
    for name in ("step_forward", "step_backward"):
        launched = int(np.prod(step_launch(7, 3, GPU_GEOMETRY, "float32")[1]))
        assert report.block_threads(name, GPU_GEOMETRY) == 256 == launched
    row = dict(target="sm_90", registers=56, shared=14336)
    assert report.occupancy(row, "step_forward") == 0.5


def test_choose_defaults_to_the_geometry_the_persistent_kernels_run():
    """choose's default block (threads, rows) is the persistent kernels' default Geometry's: at
    these shapes 8 rows a thread (the old default) would leave W_hh off-chip, or take the step path."""
    from gpurnn.kernels.cuda.runtime import GPU_GEOMETRY
    for cell, B, H in [("lstm", 8, 1220), ("gru", 8, 1460), ("rnn_tanh", 8, 1852)]:
        assert choose(cell, F32, B, H, H100, "auto", graphs=False) == choose(
            cell, F32, B, H, H100, "auto", GPU_GEOMETRY.persist_threads, GPU_GEOMETRY.persist_rows, graphs=False)
