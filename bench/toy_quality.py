"""Quality of the shipped toy models, measured with the pixel-rule labeller on images they generate.

Prints, in one process:

1. labeller accuracy on the toy VAE's reconstructions of fresh images (target >= 99%);
2. the toy's colour+shape accuracy on held-out (and seen) prompts at the default sampling settings
   (target >= 90% held-out); ``--sweep`` adds a grid of steps x guidance scales;
3. ``toy-safe`` against ``toy`` on the same seeds: red share on prompts asking for red (target <= 10%)
   and the accuracy drop on every other prompt (target <= 5 points);
4. ``--sld``: SLD (our ``audit.sld`` through ``audit.pairing``, concept "red") on the toy weights for
   every preset: red share on red prompts and its ratio to the toy's, accuracy on other prompts, and
   the colour accuracy per other colour (the collateral damage the audit must show).

    .venv/bin/python bench/toy_quality.py [--seeds 8] [--sweep] [--sld] [--json bench/out/toy_quality.json]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from audit.toy import WEIGHTS, data
from audit.toy.erase import measure_erasure
from audit.toy.labeller import label_batch
from audit.toy.quality import SamplingSettings, evaluate, load_pipeline, pipeline_sampler
from prompts.toy import toy_prompts
from rrf.manifest import provenance, write_json_atomic

CONCEPT = "red"


def labeller_on_reconstructions(vae, n: int) -> float:
    images, _, s = data.training_batch(seed=2024, index=0, n=n)  # a seed no training run uses
    with torch.no_grad():
        recon = vae.decode(vae.encode(images * 2 - 1).latent_dist.mode()).sample.add(1).div(2).clamp(0, 1)
    colours = list(data.COLOURS)
    labels = label_batch(recon)
    return sum(lab.colour == colours[c] and lab.shape == data.SHAPES[h]
               for lab, c, h in zip(labels, s.colour.tolist(), s.shape.tolist(), strict=True)) / n


def sld_sampler(model_dir: Path, preset: str, settings: SamplingSettings):
    """Images of SLD (concept ``CONCEPT``, ``preset``) on ``model_dir``, stepped by the audit's own pair code."""
    from audit.generate import initial_noise
    from audit.pairing import ModelPair
    from audit.registry import resolve

    base = resolve(str(model_dir))
    pair = ModelPair.load(base, resolve("sld", other=base, concept=CONCEPT, sld_preset=preset),
                          guidance_scale=settings.guidance_scale)
    shape = pair.latent_shape(pair.default_resolution)

    @torch.no_grad()
    def sample(prompts, seeds):
        out = []
        for i in range(0, len(prompts), settings.batch_size):
            chunk, chunk_seeds = list(prompts[i: i + settings.batch_size]), seeds[i: i + settings.batch_size]
            cond, state = pair.conditioning(chunk), pair.start(settings.steps)
            x = initial_noise(list(chunk_seeds), shape, float(state.schedulers[0].init_noise_sigma))
            for t in state.timesteps:
                x = pair.pair_step(x, t, cond, state)[1]  # follow the SLD side
            image = pair.vae.decode(x / pair.vae.config.scaling_factor).sample
            out.append(image.float().add(1).div(2).clamp(0, 1))
        return torch.cat(out)

    return sample


def colour_accuracy_by_colour(prompts, labels) -> dict[str, float]:
    result = {}
    for colour in data.COLOURS:
        hits = [lab.colour == colour for p, lab in zip(prompts, labels, strict=True) if p.attribute("colour") == colour]
        if hits:
            result[colour] = sum(hits) / len(hits)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--toy", type=Path, default=WEIGHTS / "toy")
    parser.add_argument("--safe", type=Path, default=WEIGHTS / "toy-safe")
    parser.add_argument("--seeds", type=int, default=8, help="Images per prompt.")
    parser.add_argument("--steps", type=int, default=SamplingSettings.steps)
    parser.add_argument("--guidance", type=float, default=SamplingSettings.guidance_scale)
    parser.add_argument("--sweep", action="store_true", help="Also a grid of sampling steps x guidance scales.")
    parser.add_argument("--sld", action="store_true", help="Also SLD with every preset on the toy weights.")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", type=Path, default=Path("bench/out/toy_quality.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = SamplingSettings(steps=args.steps, guidance_scale=args.guidance)
    report: dict = {"settings": vars(args) | {"toy": str(args.toy), "safe": str(args.safe), "json": str(args.json)},
                    "provenance": provenance()}
    start = time.perf_counter()

    pipe = load_pipeline(str(args.toy))
    report["labeller_on_vae_reconstructions"] = labeller_on_reconstructions(pipe.vae, 2000)
    print(f"labeller accuracy on VAE reconstructions (2000 fresh images): {report['labeller_on_vae_reconstructions']:.2%}")

    grid = [(settings.steps, settings.guidance_scale)]
    if args.sweep:
        grid += [(s, g) for s in (25, 50) for g in (3.0, 5.0, 7.5) if (s, g) != grid[0]]
    report["toy"] = {}
    for steps, guidance in grid:
        sampler = pipeline_sampler(pipe, SamplingSettings(steps=steps, guidance_scale=guidance))
        row = {split: evaluate(sampler, toy_prompts(split), args.seeds, seed=1)[0] for split in ("held-out", "seen")}
        report["toy"][f"steps={steps},guidance={guidance}"] = row
        h, s = row["held-out"], row["seen"]
        print(f"toy, DDIM {steps} steps, guidance {guidance}: held-out colour+shape {h['accuracy']:.1%} "
              f"(colour {h['colour_accuracy']:.1%}, shape {h['shape_accuracy']:.1%}); seen {s['accuracy']:.1%}")

    if args.safe.is_dir():
        erasure = measure_erasure(args.toy, args.safe, CONCEPT, args.seeds, seed=1, settings=settings)
        report["toy_safe"] = erasure
        b, e = erasure["base"], erasure["erased"]
        print(f"toy-safe: {CONCEPT} share on {CONCEPT} prompts {b['concept_share_on_concept_prompts']:.1%} -> "
              f"{e['concept_share_on_concept_prompts']:.1%}; accuracy on other prompts "
              f"{b['other_prompts_accuracy']:.1%} -> {e['other_prompts_accuracy']:.1%} "
              f"(drop {100 * erasure['other_accuracy_drop']:.1f} points)")

    if args.sld:
        prompts = toy_prompts()
        concept_prompts = [p for p in prompts if p.attribute("colour") == CONCEPT]
        other_prompts = [p for p in prompts if p.attribute("colour") != CONCEPT]
        expanded = [p for p in other_prompts for _ in range(args.seeds)]
        rows = {}
        samplers = {"none": pipeline_sampler(pipe, settings)}
        samplers |= {preset: sld_sampler(args.toy, preset, settings) for preset in ("weak", "medium", "strong", "max")}
        for name, sampler in samplers.items():
            on_concept, _ = evaluate(sampler, concept_prompts, args.seeds, seed=1)
            on_other, labels = evaluate(sampler, other_prompts, args.seeds, seed=1)
            rows[name] = {"concept_share": on_concept["colour_share"][CONCEPT],
                          "other_accuracy": on_other["attribute_accuracy"],
                          "colour_accuracy_by_colour": colour_accuracy_by_colour(expanded, labels),
                          "shape_accuracy_other": on_other["shape_accuracy"]}
        base = rows["none"]
        for name, row in rows.items():
            row["concept_share_ratio"] = row["concept_share"] / max(base["concept_share"], 1e-9)
            by_colour = ", ".join(f"{c} {v:.0%}" for c, v in row["colour_accuracy_by_colour"].items())
            print(f"SLD {name:>6}: {CONCEPT} share on {CONCEPT} prompts {row['concept_share']:.1%} "
                  f"(x{row['concept_share_ratio']:.2f} of the toy); other prompts accuracy {row['other_accuracy']:.1%}; "
                  f"colour accuracy by colour: {by_colour}; shape accuracy {row['shape_accuracy_other']:.1%}")
        report["sld"] = rows

    report["seconds"] = time.perf_counter() - start
    write_json_atomic(args.json, report)
    print(f"wrote {args.json} ({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
