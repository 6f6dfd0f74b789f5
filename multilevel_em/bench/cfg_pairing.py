"""Classifier-free guidance with MultilevelModel: how much variance pairing the two copies' draws saves.

A guidance pipeline passes [uncond; cond] copies of each latent and combines the outputs as
g = u + w (c - u).  With paired draws (the default) both copies of an image use the same
levels, so a fired correction adds (B/p) [(1 - w) du + w dc]; with independent draws the two
corrections are drawn apart and their variances add: (1 - w)^2 |du|^2 + w^2 |dc|^2.  This
script measures Var(g) over repeated draws of the estimate for a tiny ladder of
``UNet2DConditionModel``s (random weights, built from configs: no downloads) at a few guidance
scales, and also records the FLOPs per row that MultilevelModel measured for the tiny UNet and
DiT ladders used by the tests.

    mlem bench cfg-pairing            # writes results/cfg_pairing.json
    mlem bench cfg-pairing --quick    # fewer draws (the test)
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Optional

import torch

from .._io import write_json
from ..diffusion import MultilevelModel
from ..testing import tiny_dit, tiny_unet2d_condition
from .outputs import add_overwrite_argument, check_outputs, default_outputs

#: The ladders' levels: tiny models of the real classes, random weights (:mod:`multilevel_em.testing`).
unet, dit = tiny_unet2d_condition, tiny_dit


def main(argv=None, *, command: Optional[str] = None) -> dict:
    """``mlem bench cfg-pairing [ARGS]``: the argument list (default ``sys.argv[1:]``); ``command``: the command
    line recorded in the results (default: ``mlem bench cfg-pairing`` and the arguments)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="mlem bench cfg-pairing", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--out",
        default=None,
        help="JSON output (default results/cfg_pairing.json; results/cfg_pairing_quick.json with --quick)",
    )
    add_overwrite_argument(ap)
    args = ap.parse_args(argv)
    out = args.out or default_outputs("cfg-pairing", args.quick)[0]
    check_outputs(ap, [out], args.overwrite)
    torch.set_num_threads(1)
    reps = 64 if args.quick else 1000
    ladder = [unet(4, 1), unet(8, 2), unet(16, 3)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 8, 8, generator=g)
    cond, uncond = torch.randn(1, 4, 16, generator=g), torch.randn(1, 4, 16, generator=g)
    xs = torch.cat([x.repeat(reps, 1, 1, 1)] * 2)
    emb = torch.cat([uncond.repeat(reps, 1, 1), cond.repeat(reps, 1, 1)])
    probs = [0.3, 0.1]
    rows = []
    outs = {}
    for pairing in (True, False):
        mm = MultilevelModel(
            ladder, probabilities=probs, pair_guidance=pairing, generator=torch.Generator().manual_seed(1)
        )
        with torch.no_grad():  # a measurement: no autograd graph through the ladder
            outs[pairing] = mm(xs, 500, encoder_hidden_states=emb).sample
        costs = mm.costs
    for w in (1.0, 3.0, 7.5):
        var = {}
        for pairing, o in outs.items():
            guided = o[:reps] + w * (o[reps:] - o[:reps])
            var[pairing] = float(guided.double().var(0).sum())
        rows.append(
            {
                "guidance_scale": w,
                "variance_paired": var[True],
                "variance_independent": var[False],
                "ratio_independent_over_paired": var[False] / var[True],
            }
        )
    dit_mm = MultilevelModel([dit(1, 1, 1), dit(1, 2, 2), dit(2, 2, 3)], probabilities=[1.0, 1.0])
    dit_mm(torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), class_labels=torch.tensor([1, 2]))
    result = {
        "command": command or shlex.join(["mlem", "bench", "cfg-pairing", *argv]),
        "draws": reps,
        "probabilities": probs,
        "timestep": 500,
        "note": "tiny random-weight models: the ratio depends on how alike the cond and uncond level differences "
        "are; for trained models they are strongly correlated, which pairing exploits",
        "results": rows,
        "flops_per_row": {
            "unet2d_condition_widths_4_8_16": list(costs),
            "dit_layers_heads_1x1_1x2_2x2": list(dit_mm.costs),
        },
    }
    write_json(out, result, indent=1)
    json.dump(result, sys.stdout, indent=1)
    print()
    return result


if __name__ == "__main__":
    main()
