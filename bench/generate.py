"""Algorithm-2 generation throughput: our generator against a naive baseline, in one process.

Both produce the same tuples (t, x_t, base step, expert step) for the same prompts and seeds, from
random-weight pipelines of a chosen architecture built into a temporary directory:

* ours: ``audit.generate.generate`` (shared batched UNet passes, batched across prompts, sharded
  store with PNGs written);
* ours, batch 1: the same generator one trajectory at a time, which separates the gain of sharing
  UNet passes between the two models (naive -> batch 1) from that of batching prompts (batch 1 -> ours);
* naive: the two pipelines run separately, one prompt at a time: at every step the base pipeline
  evaluates its UNet on (uncond, prompt) and the expert pipeline on its own conditionings
  (uncond, prompt, concept for SLD), then both step (nothing is written).

Prints UNet evaluations per tuple, tuples/s of each, the throughput ratio (goal >= 1.5x for SLD
pairs) and bytes per tuple of the store.

    .venv/bin/python bench/generate.py [--arch small] [--pair sld|checkpoints] [--prompts 8] [--steps 20]
    # GPU machine, SD 1.5 architecture at 512x512 in fp16:
    .venv/bin/python bench/generate.py --arch sd15 --device cuda --dtype fp16 --prompts 16 --batch-size 8
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from tiny_sd import ARCHS, build_tiny_sd  # noqa: E402

from audit.generate import DTYPES, GenerateConfig, generate, initial_noise, plan_shards  # noqa: E402
from audit.pairing import ModelPair, encode_text  # noqa: E402
from audit.sld import SLDState, cfg_noise, sld_noise  # noqa: E402
from prompts import load_prompts  # noqa: E402


@torch.no_grad()
def naive(pair: ModelPair, prompts: list[str], seeds: list[int], steps: int, latent_shape, device) -> tuple[int, int]:
    """Both pipelines separately, prompt by prompt; returns (tuples, UNet evaluations)."""
    tuples = evaluations = 0
    for prompt, seed in zip(prompts, seeds, strict=True):
        for follow in ("base", "expert"):
            state = pair.start(steps, device)  # fresh scheduler copies per "pipeline"
            x = initial_noise([seed], latent_shape, float(state.schedulers[0].init_noise_sigma)).to(device)
            sld_state = SLDState()
            conds = [encode_text(side.tokenizer, side.text_encoder, ["", prompt] + ([side.sld.concept] if side.sld else []))
                     for side in pair.sides]  # each pipeline encodes its texts once per call
            for t_exact in state.schedulers[0].timesteps:
                nexts = []
                for k, side in enumerate(pair.sides):
                    n = len(conds[k])
                    model_in = state.schedulers[k].scale_model_input(torch.cat([x] * n), t_exact)
                    eps = side.unet(model_in.to(side.unet.dtype), t_exact,
                                    encoder_hidden_states=conds[k].to(side.unet.dtype)).sample.float().chunk(n)
                    evaluations += n
                    if side.sld:
                        noise, sld_state = sld_noise(eps[0], eps[1], eps[2], pair.guidance_scale, side.sld, sld_state)
                    else:
                        noise = cfg_noise(eps[0], eps[1], pair.guidance_scale)
                    nexts.append(state.schedulers[k].step(noise, t_exact, x).prev_sample)
                x = nexts[0] if follow == "base" else nexts[1]
                tuples += 1
            pair.decode(x)
    return tuples, evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=list(ARCHS), default="small")
    parser.add_argument("--pair", choices=["sld", "checkpoints"], default="sld",
                        help="SLD on the base weights, or a second checkpoint (different random UNet)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base_dir = build_tiny_sd(tmp / "base", arch=args.arch)
        safer = "sld" if args.pair == "sld" else str(build_tiny_sd(tmp / "expert", unet_seed=1, arch=args.arch))
        cfg = GenerateConfig(base=str(base_dir), safer=safer, prompts="harmless", limit=args.prompts,
                             steps=args.steps, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                             sld_preset="max" if args.pair == "sld" else None)

        start = time.perf_counter()
        ours = generate(cfg, tmp / "store", progress=False)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        single = generate(replace(cfg, batch_size=1), tmp / "store-batch1", progress=False)
        single_s = time.perf_counter() - start

        base, expert = cfg.models()
        pair = ModelPair.load(base, expert, device=args.device, dtype=DTYPES[args.dtype])
        prompts = load_prompts("harmless", limit=args.prompts).prompts
        shards = plan_shards(prompts, ("base",), len(prompts), cfg.seed, False)
        latent_shape = pair.latent_shape(pair.default_resolution)
        start = time.perf_counter()
        tuples, evaluations = naive(pair, [p.text for p in prompts], [tr.seed for tr in shards[0]], args.steps,
                                    latent_shape, torch.device(args.device))
        naive_s = time.perf_counter() - start

    params = sum(p.numel() for p in pair.base.unet.parameters()) / 1e6
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"arch {args.arch} (UNet {params:.1f}M params, latents {latent_shape}), pair {args.pair}, "
          f"{args.prompts} prompts x 2 followers x {args.steps} steps, batch {args.batch_size}, {args.device} "
          f"{args.dtype}, torch threads {torch.get_num_threads()}, load average {load}")
    print(f"{'':8}{'UNet evals/tuple':>18}{'tuples/s':>10}{'seconds':>10}")
    print(f"{'ours':8}{ours.unet_evaluations_per_tuple:>18.2f}{ours.tuples / ours_s:>10.2f}{ours_s:>10.1f}"
          "   (includes loading the models and writing the store)")
    print(f"{'batch 1':8}{single.unet_evaluations_per_tuple:>18.2f}{single.tuples / single_s:>10.2f}{single_s:>10.1f}")
    print(f"{'naive':8}{evaluations / tuples:>18.2f}{tuples / naive_s:>10.2f}{naive_s:>10.1f}")
    naive_rate = tuples / naive_s
    print(f"shared passes (batch 1 / naive): {(single.tuples / single_s) / naive_rate:.2f}x; batching "
          f"(ours / batch 1): {(ours.tuples / ours_s) / (single.tuples / single_s):.2f}x")
    print(f"throughput ratio ours/naive: {(ours.tuples / ours_s) / naive_rate:.2f}x; "
          f"store: {ours.bytes_per_tuple:.0f} bytes of latents per tuple "
          f"({ours.bytes_per_tuple / (4 * latent_shape[1] * latent_shape[2] * 2):.2f} fp16 latents), "
          f"{ours.bytes / ours.tuples:.0f} bytes per tuple with PNGs")


if __name__ == "__main__":
    main()
