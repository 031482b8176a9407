"""The choice of the cuda algorithm (kernels/cuda/plan.py), on modelled devices: no GPU needed."""


import numpy as np

import pytest

pytest.importorskip("numba.cuda")
from gpurnn.kernels.cuda import plan
from gpurnn.kernels.cuda.plan import A100, H100, choose
from gpurnn.kernels.cuda.runtime import GPU_GEOMETRY

F32, F64 = 4, 8


# The persistent kernels' registers per thread at sm_90 (benchmarks/results/kernel_report.json
# holds the compiled figures; tests/test_cuda_compile.py checks the limits below against them).
H100_COMPILED = plan.with_registers(H100, 220)


@pytest.mark.parametrize("cell", ["rnn_tanh", "lstm", "gru"])
@pytest.mark.parametrize("H", [64, 256, 512, 1024])
@pytest.mark.parametrize("B", [1, 8, 15])
def test_the_target_shapes_run_persistent_on_an_h100(cell, H, B):
    """B < 16, H 64-1024, float32: the shapes the persistent kernels are for. The grid covers the
    hidden units and the batch, fits the SMs, and every block's shared memory fits."""
    p = choose(cell, F32, B, H, H100_COMPILED, "auto", graphs=False)
    assert p.algo == "persistent", p
    assert p.blocks == p.groups * p.slices <= H100.sms
    assert p.slices * p.units >= H > (p.slices - 1) * p.units
    assert p.groups * p.rows >= B > (p.groups - 1) * p.rows
    assert max(p.fwd_shared, p.bwd_shared) <= H100.smem_per_block
    assert p.threads // p.fwd_lanes >= min(p.units, p.threads // plan.MIN_LANES)
    if H <= 256:            # W_hh's slice in registers in both kernels, as the design wants
        assert p.fwd_registers_only and p.bwd_registers_only, p
    if H <= 64 and B <= plan.GPU_GEOMETRY.persist_rows:     # one block, no exchange, or two slices
        assert p.groups == 1 and p.slices == (1 if cell == "rnn_tanh" else 2), p


def test_batch_rows_become_groups_of_the_same_slices():
    one, eight = (choose("lstm", F32, B, 256, H100_COMPILED, "auto", graphs=False) for B in (1, 8))
    assert one.groups == 1 and eight.groups == 2 and one.slices == eight.slices and eight.rows == 4


@pytest.mark.parametrize("kernel", ["persistent_forward", "persistent_backward"])
@pytest.mark.parametrize("units,H", [(1, 1), (3, 7), (8, 256), (64, 64), (300, 300)])
def test_lanes_are_a_power_of_two_within_a_warp(kernel, units, H):
    lanes = plan.lanes_for(kernel, units, H, 256)
    assert lanes & (lanes - 1) == 0 and 1 <= lanes <= 32
    per_team = units if kernel == "persistent_forward" else H
    assert lanes == 1 or 256 // lanes >= per_team       # a team walks one unit (column) when it can


def test_layout_counts_what_does_not_fit_in_registers():
    """Forward, LSTM, H = 256, 8 units a block, 32 lanes: 8 columns a lane, all in registers (32
    values a thread), a staged row of 256; at 64 units, 4 lanes: 64 columns a lane, 56 of each
    gate row in shared memory, 4 x 56 values of each of the 256 threads. Backward, 8 units, 1
    lane: 32 own gate rows a lane, in registers, a staged row of 32."""
    from gpurnn.kernels.cuda.runtime import GPU_GEOMETRY as geo
    assert plan.layout("persistent_forward", 4, 256, 8, 32, geo, F32) == (True, 256, 0)
    assert plan.layout("persistent_forward", 4, 256, 64, 4, geo, F32) == (False, 256, 4 * 56 * 256)
    assert plan.layout("persistent_backward", 4, 256, 8, 1, geo, F32) == (True, 32, 0)


def test_a_large_batch_is_staged_in_chunks_that_fit():
    """B = 256 in two groups of 128 rows: their h_{t-1} (128 x 512 floats) does not fit beside
    W_hh, so the rows are staged as many at a time as fit, a multiple of the rows of a pass."""
    p = choose("lstm", F32, 256, 512, H100_COMPILED, "persistent")
    rb = plan.GPU_GEOMETRY.persist_rows
    assert p.algo == "persistent" and rb <= p.chunk < p.rows and p.chunk % rb == 0, p
    assert max(p.fwd_shared, p.bwd_shared) + 4 * plan.static_elements("persistent_forward", 4, plan.GPU_GEOMETRY) \
        <= H100.smem_per_block
    small = choose("lstm", F32, 8, 512, H100_COMPILED, "persistent")
    assert small.chunk == small.rows                     # all of a block's rows at once when they fit


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


def test_past_the_chip_auto_takes_the_step_path_and_forced_persistent_says_why():
    p = choose("lstm", F32, 8, 2048, H100, "auto")     # W_hh = 64 MiB: more than 132 SMs hold
    assert p.algo == "step" and "keeps W_hh on-chip" in p.why, p
    with pytest.raises(ValueError, match=r"algo='persistent' cannot run lstm with H=2048, B=8: no split"):
        choose("lstm", F32, 8, 2048, H100, "persistent")
    assert choose("lstm", F32, 8, 256, H100, "step").algo == "step"


def test_forced_persistent_that_cannot_be_resident_says_why():
    tiny = plan.Device("a GPU with little shared memory", sms=2, smem_per_sm=2048, smem_per_block=2048,
                       l2_bytes=1 << 20)
    with pytest.raises(ValueError, match=r"algo='persistent' cannot run lstm with H=64, B=2: .*resident at "
                                         r"once.*use algo='step' or 'auto'"):
        choose("lstm", F64, 2, 64, tiny, "persistent")       # W_hh alone is 128 KiB
    p = choose("lstm", F64, 2, 64, tiny, "auto")
    assert p.algo == "step" and "resident" in p.why


def test_unknown_algo():
    with pytest.raises(ValueError, match="unknown algo 'fast'; expected one of auto, persistent, step"):
        choose("lstm", F32, 8, 256, H100, "fast")


def test_the_driver_occupancy_decides_when_given():
    """On a GPU the co-residency comes from the driver: a grid it refuses is not planned."""
    def driver(kernel, threads, static, dyn):
        return 0 if dyn > 48 * 1024 else 132     # e.g. the opt-in for large dynamic shared memory failed
    p = choose("lstm", F32, 8, 512, H100, "auto", cooperative_blocks=driver)
    assert p.algo == "persistent" and max(p.fwd_shared, p.bwd_shared) <= 48 * 1024, p
    assert choose("lstm", F32, 8, 1024, H100, "auto", cooperative_blocks=driver).algo == "step"


def test_resident_blocks_follow_registers_threads_and_shared_memory():
    assert H100.resident_blocks(256, 0, 0, registers=128) == 2        # 64 K registers / (256 x 128)
    assert H100.resident_blocks(256, 0, 0, registers=32) == 8         # 2048 threads an SM
    assert H100.resident_blocks(256, 0, 100 * 1024, registers=32) == 2  # 228 KiB / (100 + 1) KiB
    assert H100.resident_blocks(256, 0, 228 * 1024, registers=32) == 0  # more than a block may have
    assert A100.resident_blocks(1024, 0, 0, registers=255) == 0        # 255 x 1024 registers: none


def test_limits_on_the_modelled_h100():
    lim = plan.limits("lstm", F32, H100_COMPILED)
    assert lim["largest_grid"] == 132
    assert 256 <= lim["largest_hidden_w_in_registers"] < 512 and 1024 <= lim["largest_hidden"] < 2048


def test_plan_describes_itself():
    assert choose("gru", F32, 8, 256, H100, "step").describe() == "step (asked for, reduction in 16 parts)"
    assert choose("gru", F32, 512, 1024, H100, "step").describe() == "step (asked for)"
    text = choose("gru", F32, 8, 256, H100).describe()
    assert text == ("persistent (2 groups x 32 slices = 64 blocks x 256 threads, 8 units x 4 rows a block; "
                    "W_hh in registers forward, registers backward)"), text


def test_fewest_rounds_weighs_rounds_against_the_split():
    """32 blocks of 64 tiles on a GPU holding 100 at once, a part's hand-over and the sum 4 tiles
    each: S = 3 makes one round of 96 blocks of 22 + 4 tiles, + 4 = 30; S = 4 two rounds of
    16 + 4, + 4 = 44; S = 6 two of 11 + 4, + 4 = 34; S = 1 64 tiles; S = 64 21 rounds of 1 + 4."""
    def rounds(blocks, work, wave, most, part, total):
        return plan.fewest_rounds(blocks, work, wave, most, part, lambda S: total)
    assert rounds(32, 64, 100, 64, 4, 4) == 3
    assert rounds(32, 64, 100, 2, 4, 4) == 2          # at most 2: 32 + 4 + 4 < 64
    assert rounds(32, 64, 100, 64, 0, 0) == 64        # free hand-overs: 21 rounds of 1 tile beat 22 in one
    assert rounds(200, 64, 100, 64, 0, 0) == 1        # two rounds already: more parts only add rounds
    assert rounds(32, 8, 100, 64, 4, 4) == 1          # 8 tiles: no split pays its 8
    assert plan.fewest_rounds(32, 64, 100, 64, 1, lambda S: S) == 3   # accumulate's costs: 22 + 1 + 3 = 26


@pytest.mark.parametrize("B, H, rows, parts", [
    (64, 1024, 4, 2),      # 32 x 4 blocks of 64 k tiles: 2 parts, one round of 256 (of 264) blocks
    (64, 256, 4, 8),       # 8 x 4 blocks of 16 tiles: 8 parts of 2 in one round, 2 + 4 + 4 < 16
    (256, 256, 4, 1),      # 8 x 16 blocks: 2 parts would make 1 round of 8 + 4 tiles, + 4 = 16, a tie
    (128, 1024, 4, 1),     # 32 x 8 blocks fill a round already
    (8, 512, 2, 16),       # 8 rows: blocks of 4 x 2 rows a thread, not 4 x 4; 16 x 1 blocks
    (3, 1024, 1, 8),       # 3 rows: blocks of 4 x 1
    (64, 64, 4, 1),        # 4 k tiles: no split pays its 8
])
def test_step_plans_size_blocks_from_b_and_split_where_it_pays(B, H, rows, parts):
    """A step plan's rows a thread are the fewest powers of two covering B (at most step_rb), and
    its parts ``fewest_rounds``' over the x-y grid, the forward's k tiles and the blocks an H100
    holds at the kernels' launch bounds; the launch follows the plan."""
    p = choose("lstm", F32, B, H, H100, "step")
    assert (p.step_rows, p.splits) == (rows, parts), p
    geo = p.geometry(GPU_GEOMETRY)
    assert geo.step_rb == rows and geo.step_h == GPU_GEOMETRY.step_h
    from gpurnn.kernels.cuda.step import step_launch
    (bx, by, bz), threads = step_launch(H, B, geo, "float32", p.splits)
    wave = H100.resident_blocks(int(np.prod(threads)), 0, 0, plan.STEP_REGISTERS) * H100.sms
    assert bz == parts and by == -(-B // (GPU_GEOMETRY.step_b * rows)) and wave == 264
    tiles = -(-H // GPU_GEOMETRY.step_k)
    cost = H100.split_cost_tiles
    assert parts == plan.fewest_rounds(bx * by, tiles, wave, tiles, cost, lambda S: cost)


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
