"""Compile the Triton kernels for Hopper (sm_90) on a machine without a GPU and report resources.

    python bench/compile_report.py [--all-configs]

For each kernel variant and block configuration: shared memory, registers per thread, stack
(spill) bytes, and counts of the SASS instructions that say whether the fast paths were taken
(HGMMA = Hopper warpgroup MMA, HMMA = the older MMA, LDL/STL = local-memory spills, LDGSTS =
cp.async pipelined loads). Arguments are compiled with the 16-divisibility the JIT infers for the
seed shapes (512, 4096, 2400 rows ...), as real launches would be. Needs triton's NVIDIA backend
(ptxas and cuobjdump ship in the wheel), not a GPU; TRITON_INTERPRET must be unset.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

DIVISIBLE_BY_16 = {"M", "M_BUCKET", "K", "NOUT", "stride_xm", "stride_ym", "R", "S", "HID", "stride_q", "stride_kv", "stride_z", "stride_x"}
SASS_OPS = ("HGMMA", "HMMA", "LDL", "STL", "LDGSTS")


def _compile(fn, types: dict[str, str], consts: dict, num_warps: int, num_stages: int) -> dict:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {name: types.get(name, "constexpr") for name in fn.arg_names}
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if sig[name].startswith("*") or (name in DIVISIBLE_BY_16 and sig[name] != "constexpr")
    }
    src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
    kernel = triton.compile(
        src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(kernel.asm["cubin"])
        f.flush()
        res = subprocess.run([f"{tools}/cuobjdump", "-res-usage", f.name], capture_output=True, text=True).stdout
        sass = subprocess.run([f"{tools}/cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    usage = dict(re.findall(r"(REG|STACK):(\d+)", res))
    return {
        "shared": kernel.metadata.shared,
        "regs": int(usage.get("REG", -1)),
        "stack": int(usage.get("STACK", -1)),
        **{op: len(re.findall(rf"\b{op}\b", sass)) for op in SASS_OPS},
    }


def variants(all_configs: bool):
    """(label, kernel, arg types, constexprs, warps, stages) for every variant the scorer launches."""
    import triton.language as tl

    from energy_rerank.kernels import energy_attention, energy_readout, fused_chain, fused_linear

    lin = fused_linear._fused_linear_kernel
    configs = fused_linear.AUTOTUNE_CONFIGS if all_configs else fused_linear.AUTOTUNE_CONFIGS[:1]
    modes = {
        "ln folded (context fc1)": dict(HAS_LN=False, LN_FOLDED=True, RELU=True, RESIDUAL=False, HAS_TABLE=False),
        # the same reading the graph's caller's tensor at an address (zero-copy CUDA-graph input)
        "ln folded, x by address": dict(HAS_LN=False, LN_FOLDED=True, RELU=True, RESIDUAL=False, HAS_TABLE=False,
                                        X_BY_ADDRESS=True),
        "ln folded + residual (blocks)": dict(HAS_LN=False, LN_FOLDED=True, RELU=True, RESIDUAL=True, HAS_TABLE=False),
        "ln folded + table (queries)": dict(HAS_LN=False, LN_FOLDED=True, RELU=False, RESIDUAL=False, HAS_TABLE=True),
        "ln prologue + residual": dict(HAS_LN=True, LN_FOLDED=False, RELU=True, RESIDUAL=True, HAS_TABLE=False),
        "plain (out_proj)": dict(HAS_LN=False, LN_FOLDED=False, RELU=False, RESIDUAL=False, HAS_TABLE=False),
    }
    for dt, dot in (("bf16", tl.bfloat16), ("fp32", tl.float32)):
        types = {n: "*fp32" for n in ("bias_ptr", "table_ptr", "ln_w_ptr", "ln_b_ptr", "colsum_ptr", "stats_ptr")}
        types |= {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "y_ptr": f"*{dt}", "eps": "fp32", "x_address_ptr": "*i64"}
        types |= {n: "i32" for n in ("M", "K", "NOUT", "STEPS", "M_BUCKET", "stride_xm", "stride_ym")}
        for mode, flags in modes.items():
            for cfg in configs:
                c = cfg.kwargs
                label = f"linear {dt} {mode} {c['BLOCK_M']}x{c['BLOCK_N']}x{c['BLOCK_K']} w{cfg.num_warps}s{cfg.num_stages}"
                consts = dict({"X_BY_ADDRESS": False, "X_ALIGN": 16} | flags, DOT_DTYPE=dot, PRECISION="tf32x3", **c)
                yield label, lin, types, consts, cfg.num_warps, cfg.num_stages
        types = {"q_ptr": f"*{dt}", "kv_ptr": f"*{dt}", "valid_ptr": "*u8", "z_ptr": f"*{dt}", "valid_address_ptr": "*i64"}
        types |= {n: "i32" for n in ("R", "S", "HID", "stride_q", "stride_kv", "stride_z")}
        bl = energy_attention.AttentionBlocks()
        for by_address in (False, True):  # True: the mask read at an address (zero-copy CUDA-graph input)
            consts = dict(DH=64, VALID_BY_ADDRESS=by_address, DOT_DTYPE=dot, PRECISION="tf32x3", BLOCK_M=bl.block_m,
                          BLOCK_S=bl.block_s)  # fmt: skip
            label = f"attention {dt} d_head 64{', valid by address' if by_address else ''} {bl.block_m}x{bl.block_s} " \
                    f"w{bl.num_warps}s{bl.num_stages}"  # fmt: skip
            yield label, energy_attention._masked_cross_attention_kernel, types, consts, bl.num_warps, bl.num_stages
        types = {n: "*fp32" for n in ("ln_w_ptr", "ln_b_ptr", "w_ptr", "bias_ptr", "out_ptr")}
        types |= {"x_ptr": f"*{dt}", **{n: "i32" for n in ("C", "H", "HID", "stride_x")}}
        types |= {n: "fp32" for n in ("eps", "prescale", "scale", "offset")}
        consts = dict(ACTIVATION=2, H_P=8, HID_P=512, BLOCK_C=2)
        yield f"readout {dt} H 8 hidden 512", energy_readout._energy_readout_kernel, types, consts, 4, 1
        # the fused plan's chains (seed head: A = 7, hidden 512, H = 8)
        types = {n: "*fp32" for n in ("bias_ptr", "colsum_ptr", "eps_ptr", "table_ptr", "ro_ln_w_ptr", "ro_ln_b_ptr",
                                      "ro_w_ptr", "ro_b_ptr", "out_ptr", "pre_stats_ptr", "pre_colsum_ptr", "pre_bias_ptr")}
        types["x_address_ptr"] = "*i64"
        types |= {n: f"*{dt}" for n in ("x_ptr", "w_ptr", "scratch_ptr", "y_ptr")}
        types |= {n: "i32" for n in ("C", "H", "STEPS", "C_BUCKET", "stride_x")}
        types |= {n: "fp32" for n in ("ro_eps", "prescale", "scale", "offset")}
        context: dict[str, Any] = dict(K0=512, NLAST=1024, LAYERS=2, LN_MASK=3, RELU_MASK=1, RES_MASK=1, HAS_TABLE=False, READOUT=False,
                       H_P=1, PRE=0)
        chains: dict[str, dict[str, Any]] = {
            "actions": dict(K0=7, NLAST=512, LAYERS=3, LN_MASK=7, RELU_MASK=3, RES_MASK=2, HAS_TABLE=True, READOUT=False,
                            H_P=1, PRE=0),
            # the same reading the caller's candidates at an address (zero-copy CUDA-graph input)
            "actions, x by address": dict(K0=7, NLAST=512, LAYERS=3, LN_MASK=7, RELU_MASK=3, RES_MASK=2, HAS_TABLE=True,
                                          READOUT=False, H_P=1, PRE=0, X_BY_ADDRESS=True),
            "context": context,
            "context+pre": dict(context, PRE=2),  # fused_cublas: x is the fp32 cuBLAS product
            "tail+readout": dict(K0=512, NLAST=512, LAYERS=4, LN_MASK=14, RELU_MASK=14, RES_MASK=12, HAS_TABLE=False,
                                 READOUT=True, H_P=8, PRE=0),
        }
        chain_configs = fused_chain.CHAIN_AUTOTUNE_CONFIGS if all_configs else fused_chain.CHAIN_AUTOTUNE_CONFIGS[:1]
        for name, flags in chains.items():
            if flags["PRE"] and dt != "bf16":
                continue  # fused_cublas is bf16 only
            for cfg in chain_configs:
                c = dict(cfg.kwargs)
                rows = c["BLOCK_C"]
                c["BLOCK_C"] = max(1, rows // flags["H_P"])
                label = f"chain {dt} {name} {rows}x{c['BLOCK_N']}x{c['BLOCK_K']} w{cfg.num_warps}s{cfg.num_stages}"
                consts = dict({"X_BY_ADDRESS": False} | flags, HID=512, ACTIVATION=2, DOT_DTYPE=dot, PRECISION="tf32x3", **c)
                chain_types = dict(types, x_ptr="*fp32") if flags["PRE"] else types
                yield label, fused_chain._fused_chain_kernel, chain_types, consts, cfg.num_warps, cfg.num_stages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/compile_report.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all-configs", action="store_true", help="every fused_linear autotune config")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter compiles nothing")
        return 2
    print(f"{'variant':62} {'smem KB':>7} {'regs':>4} {'stack':>5} " + " ".join(f"{op:>6}" for op in SASS_OPS))
    failed = 0
    for label, fn, types, consts, warps, stages in variants(args.all_configs):
        try:
            r = _compile(fn, types, consts, warps, stages)
        except Exception as e:  # a config that does not compile is a finding, not a crash
            failed += 1
            print(f"{label:62} FAILED {type(e).__name__}: {str(e).splitlines()[0][:80]}")
            continue
        over = " (> 227 KB: pruned at launch)" if r["shared"] > 232448 else ""
        print(f"{label:62} {r['shared'] / 1024:>7.1f} {r['regs']:>4} {r['stack']:>5} "
              + " ".join(f"{r[op]:>6}" for op in SASS_OPS) + over, flush=True)
    return int(failed > 0)


if __name__ == "__main__":
    sys.exit(main())
