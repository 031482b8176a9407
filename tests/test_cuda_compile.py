"""Every CUDA kernel compiles to SASS for sm_80 and sm_90, without a GPU, and spills nothing, the
forward kernels of a half format (bfloat16, kernels/report.py's REPORTED_HALF) too; the
register-tiled kernels feed at least 4 multiply-adds per shared-memory load in their hottest loop
(float32 and the half format); the persistent kernels' flag waits still load, and their time step's loops are found;
the persistent path's limits on an A100 and an H100 follow from the compiled kernels' resources.

Runs ``python -m gpurnn.kernels.report --json --target sm_XX`` in two subprocesses at once (the
compiler cannot share a process with the simulator; one target each halves the wait on two cores)
and checks each row of their output.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CELLS, SIMULATED
from gpurnn.kernels.cuda import FORWARD_KERNELS as HALF_KERNELS  # a half format's own kernels
from gpurnn.kernels.report import (MIN_FFMA_PER_LDS, MISSING_TOOLCHAIN, REPORTED_HALF, TILED,
                                   hot_loop, kernels_run_by)

KERNELS = ("step_forward", "step_backward", "persistent_forward", "persistent_backward")
COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "kernel_report.json"
TARGETS = ("sm_80", "sm_90")


def _reports():
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    procs = [subprocess.Popen([sys.executable, "-m", "gpurnn.kernels.report", "--json", "--target", t], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for t in TARGETS]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (out, err) in zip(procs, outs):
        if p.returncode == MISSING_TOOLCHAIN:
            pytest.skip(err.strip())
        start = out.find("{")
        assert start >= 0, f"the report printed no JSON (exit {p.returncode}):\n{err[-4000:]}"
        yield p.returncode, err, json.loads(out[start:])


@pytest.mark.slow
@pytest.mark.skipif(SIMULATED, reason="the compiler cannot run in the simulator's process")
def test_every_kernel_compiles_without_spills():
    results = list(_reports())
    rows = [r for _, _, res in results for r in res["rows"]]
    limits = [r for _, _, res in results for r in res["persistent_limits"]]
    for _, _, result in results:
        assert result["toolchain"].startswith("numba-cuda "), result["toolchain"]   # the version that compiled

    want = {(k, c, d, t) for d in ("float32", "float64") for t in TARGETS
            for k, c in [("accumulate", "*")] + [(n, c) for c in CELLS for n in KERNELS]}
    want |= {(k, c, h, t) for h in REPORTED_HALF for t in TARGETS for c in CELLS for k in HALF_KERNELS}
    want |= {("mma_products", "*", mode, t) for mode in ("bfloat16", "float16", "tf32") for t in TARGETS}
    got = {(r["kernel"], r["cell"], r["dtype"], r["target"]) for r in rows}
    assert got == want, f"missing {sorted(want - got)}, unexpected {sorted(got - want)}"
    # The half format's forward kernels (their rounding at every store) compile as float32's do:
    # no spill, no local memory, the same hot loop.
    half = [r for r in rows if r["dtype"] in REPORTED_HALF and r["kernel"] != "mma_products"]
    assert len(half) == len(REPORTED_HALF) * len(TARGETS) * len(CELLS) * len(HALF_KERNELS)
    for r in half:
        f32 = next(x for x in rows if (x["kernel"], x["cell"], x["dtype"], x["target"]) ==
                   (r["kernel"], r["cell"], "float32", r["target"]))
        assert r["spill_stores"] == r["spill_loads"] == r["stack"] == r["local"] == 0, r
        assert (r["fma"], r["lds"]) == (f32["fma"], f32["lds"]), (r, f32)
    for r in rows:
        name = f"{r['kernel']} {r['cell']} {r['dtype']} {r['target']}"
        assert r["spill_stores"] == 0 and r["spill_loads"] == 0, f"{name} spills: {r}"
        assert r["stack"] == 0 and r["local"] == 0, f"{name} uses local memory: {r}"
        # Only the grid sync's call into the device runtime may add a frame, of a few bytes.
        assert r["call_stack"] == 0 or (r["kernel"].startswith("persistent") and r["call_stack"] <= 64), r
        assert 0 < r["registers"] <= 255, f"{name}: {r}"
        assert r["shared"] <= 48 * 1024, f"{name} needs more than 48 KiB of static shared memory: {r}"
        assert 0 < r["occupancy"] <= 1, f"{name}: {r}"
        if r["kernel"].startswith("persistent"):
            loops = r["step_loops"]
            # the flag wait still loads (a wait on weak loads compiles to none), and the step's loops
            # were found: the critical path is made of them
            assert loops["polls"] >= 1, f"{name}: its flag wait compiled to no load: {r}"
            assert 0 < loops["lane_sum"] < loops["pass"] < loops["step"], f"{name}: {r}"
            assert loops["shared"] > 0 and loops["staging"] > 0, f"{name}: {r}"
            assert loops["step"] <= r["critical_path"] < 100 * loops["step"], f"{name}: {r}"
        if r["kernel"] == "mma_products":
            # the tensor cores' products: HMMA in the hot loop (their operands come from global memory)
            assert r["fma"] >= 1, f"{name}: no HMMA in a loop: {r}"
            continue
        # Every other kernel's hottest loop is a product: multiply-adds fed from shared memory.
        assert r["fma"] > 0 and r["lds"] > 0, f"{name}: no multiply-add loop found: {r}"
        if r["kernel"] in TILED and r["dtype"] != "float64":
            assert r["ffma_per_lds"] >= MIN_FFMA_PER_LDS, f"{name}: {r['ffma_per_lds']} FFMA per LDS: {r}"
    for code, err, _ in results:
        assert code == 0, err[-4000:]

    limits = {(r["device"].split()[0], r["cell"], r["dtype"]): r for r in limits}
    assert set(limits) == {(d, c, t) for d in ("A100", "H100") for c in CELLS
                           for t in ("float32", "float64", *REPORTED_HALF)}
    for (device, cell, dtype), r in limits.items():
        # a half format's layer runs its own persistent_forward and float32's persistent_backward
        regs = max(x["registers"] for x in rows if x["kernel"].startswith("persistent") and x["cell"] == cell
                   and x["dtype"] == kernels_run_by(dtype, x["kernel"])
                   and x["target"] == {"A100": "sm_80", "H100": "sm_90"}[device])
        assert r["registers"] == regs, r
        assert r["largest_grid"] == {"A100": 108, "H100": 132}[device], r      # one block per SM
        assert 0 < r["largest_hidden_w_in_registers"] <= r["largest_hidden"], r
    # The shapes the persistent path is for: float32 LSTMs up to H = 1024 on an H100, W_hh in
    # registers up to H = 256.
    assert limits[("H100", "lstm", "float32")]["largest_hidden"] >= 1024
    assert limits[("H100", "lstm", "float32")]["largest_hidden_w_in_registers"] >= 256

    # The committed report, which the docs' tables are generated from, is what this toolchain
    # compiles now (another numba-cuda may allocate registers otherwise: then it is not compared).
    committed = json.loads(COMMITTED.read_text(encoding="utf-8"))
    if committed["toolchain"] == results[0][2]["toolchain"]:
        def key(r):
            return r["kernel"], r["cell"], r["dtype"], r["target"]
        fresh = "regenerate it: python -m gpurnn.kernels.report --json > benchmarks/results/kernel_report.json"
        assert sorted(rows, key=key) == sorted(committed["rows"], key=key), f"{COMMITTED} is stale: {fresh}"
        assert [r for _, _, res in results for r in res["persistent_limits"]] == committed["persistent_limits"], \
            f"{COMMITTED} is stale: {fresh}"


# A hand-written disassembly in nvdisasm's format: the hottest loop is the inner one with the most
# FFMA (.L_x_2 .. the branch at 0x0090), not the loop without FFMA, nor the outer loop around both,
# whose own body (a pointwise part, say) has more FFMA but is not innermost.
SASS = """
\t.section\t.text.other_kernel,"ax",@progbits
        /*0000*/                   FFMA R1, R2, R3, R4 ;
\t.section\t.text._ZN3foo7my_kernelE,"ax",@progbits
\t.sectioninfo\t@"SHI_REGISTERS=40"
.L_x_0:
        /*0000*/                   LDG.E R1, desc[UR4][R2.64] ;
.L_x_1:
        /*0010*/                   LDS R4, [R5] ;
        /*0020*/              @!P0 BRA `(.L_x_1) ;
.L_x_2:
        /*0030*/                   LDS.128 R8, [R6] ;
        /*0040*/                   LDS.64 R12, [R7+0x10] ;
        /*0050*/                   FFMA R20, R8, R12, R20 ;
        /*0060*/                   FFMA R21, R9, R12, R21 ;
        /*0070*/                   FFMA R22, R10, R13, R22 ;
        /*0080*/                   FFMA.FTZ R23, R11, R13, R23 ;
        /*0090*/               @P1 BRA `(.L_x_2) ;
        /*00a0*/                   FADD R1, R20, R21 ;
        /*00b0*/                   FFMA R1, R1, R1, 1 ;
        /*00c0*/                   FFMA R1, R1, R1, 1 ;
        /*00d0*/                   FFMA R1, R1, R1, 1 ;
        /*00e0*/                   FFMA R1, R1, R1, 1 ;
        /*00f0*/                   FFMA R1, R1, R1, 1 ;
        /*0100*/                   BRA `(.L_x_0) ;
        /*0110*/                   EXIT ;
"""


def test_hot_loop_reads_the_innermost_loop_with_the_most_multiply_adds():
    got = hot_loop(SASS, "my_kernel")
    assert got == dict(fma=4, lds=2, ffma_per_lds=2.0, loop_instructions=7), got
    assert hot_loop(SASS, "my_kernel", "DFMA")["ffma_per_lds"] is None
    with pytest.raises(ValueError, match="not found"):
        hot_loop(SASS, "missing_kernel")


# A persistent kernel's time step in nvdisasm's format: a wait loop, a staging loop, then a pass
# (the product from registers, a barrier) around a loop of W_hh from shared memory and a lane sum;
# the step loop around all of it.
STEP_SASS = """
\t.section\t.text._ZN3foo18persistent_forwardE,"ax",@progbits
.L_x_0:
        /*0000*/                   LDG.E.STRONG.GPU R1, desc[UR4][R2.64] ;
        /*0010*/              @P0 BRA `(.L_x_0) ;
        /*0020*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
.L_x_1:
        /*0030*/                   LDG.E.STRONG.GPU R4, desc[UR4][R6.64] ;
        /*0040*/                   STS [R7], R4 ;
        /*0050*/               @P1 BRA `(.L_x_1) ;
.L_x_2:
        /*0060*/                   FFMA R8, R9, R10, R8 ;
        /*0070*/                   FFMA R11, R9, R12, R11 ;
        /*0080*/                   FFMA R13, R9, R14, R13 ;
.L_x_3:
        /*0090*/                   LDS R15, [R16] ;
        /*00a0*/                   LDS R17, [R18] ;
        /*00b0*/                   FFMA R8, R15, R17, R8 ;
        /*00c0*/               @P2 BRA `(.L_x_3) ;
.L_x_4:
        /*00d0*/                   LDS R19, [R20] ;
        /*00e0*/                   FADD R21, R21, R19 ;
        /*00f0*/               @P3 BRA `(.L_x_4) ;
        /*00f8*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0100*/                   STG.E desc[UR4][R2.64], R21 ;
        /*0110*/               @P4 BRA `(.L_x_2) ;
        /*0120*/               @P5 BRA `(.L_x_0) ;
        /*0130*/                   EXIT ;
"""


def test_step_loops_reads_a_persistent_kernels_time_step():
    from gpurnn.kernels.report import step_loops
    got = step_loops(STEP_SASS, "persistent_forward")
    assert got == dict(step=20, **{"pass": 13}, lane_sum=3, lane_sum_lds=1, shared=4, shared_lds=2, staging=3,
                       staging_sts=1, polls=1), got
    weak = STEP_SASS.replace("LDG.E.STRONG.GPU R1, desc[UR4][R2.64] ;\n        /*0010*/              @P0 BRA",
                             "NOP ;\n        /*0010*/              @P0 BRA")
    assert step_loops(weak, "persistent_forward")["polls"] == 0        # a wait whose load was deleted
