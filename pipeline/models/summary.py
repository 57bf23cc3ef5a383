"""`technogan models --model NAME [--resolution N]`: each network's layers as the study's figures list them.

    Layer (type)            Output Shape           Param #
    Conv2d-1                [-1, 64, 32, 32]         1,088
    LeakyReLU-2             [-1, 64, 32, 32]             0
    ...
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from pipeline.config import ModelConfig, add_config_argument, config_from_args
from pipeline.models.networks import layer_name, leaf_layers
from pipeline.models.registry import MODELS, get_model


def layer_table(module: nn.Module, example: torch.Tensor) -> list[tuple[str, list[int], int]]:
    """[(``Type-i``, output shape with -1 for the batch, parameter count)] of every leaf layer, in forward order."""
    net: nn.Module = getattr(module, "net", module)
    rows: list[tuple[str, list[int], int]] = []
    hooks = []

    def hook(m: nn.Module, _inp, out: torch.Tensor) -> None:
        # a leaf's own parameters (a spectrally normalised conv keeps its weight one level down)
        rows.append((f"{layer_name(m)}-{len(rows) + 1}", [-1, *out.shape[1:]],
                     sum(p.numel() for p in m.parameters())))

    for m in leaf_layers(net):
        hooks.append(m.register_forward_hook(hook))
    try:
        was_training = module.training
        module.eval()
        with torch.no_grad():
            module(example)
        module.train(was_training)
    finally:
        for h in hooks:
            h.remove()
    return rows


def format_table(title: str, rows: list[tuple[str, list[int], int]]) -> str:
    line = "-" * 64
    out = [title, line, f"{'Layer (type)':>20}  {'Output Shape':>25}  {'Param #':>13}", "=" * 64]
    for name, shape, n in rows:
        out.append(f"{name:>20}  {str(shape):>25}  {n:>13,}")
    total = sum(n for _, _, n in rows)
    out += ["=" * 64, f"Total params: {total:,}", line]
    return "\n".join(out)


def summarize(name: str, model_cfg: ModelConfig, resolution: int) -> str:
    """Both networks of model ``name`` at ``resolution``, as printable tables."""
    spec = get_model(name)
    g = spec.build_generator(model_cfg, resolution)
    d = spec.build_critic(model_cfg, resolution)
    z = torch.zeros(2, model_cfg.latent_dim)  # [B, Z]
    x = torch.zeros(2, 1, resolution, resolution)  # [B, 1, R, R]
    fig = lambda f: f.replace("figure", "Figure ")  # noqa: E731
    tables = [
        f"{spec.description} at {resolution}x{resolution}, latent {model_cfg.latent_dim}",
        format_table(f"{spec.critic_kind.capitalize()} ({fig(spec.critic_figure)})", layer_table(d, x)),
        format_table(f"Generator ({fig(spec.generator_figure)})", layer_table(g, z)),
    ]
    # the options' extra paths are not in the figures: their own tables, so the totals stay the figures'
    for title, branch, example in (("Critic time branch (model.d_time_branch)", d.time_branch, x),
                                   ("Critic rhythm branch (model.d_rhythm_branch)", d.rhythm_branch, x),
                                   ("Generator time branch (model.g_time_branch)", g.time_branch, z[:, :, None, None])):
        if branch is not None:
            tables.append(format_table(title, layer_table(branch, example)))
    return "\n\n".join(tables)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help=f"one of: {', '.join(MODELS)}")
    p.add_argument("--resolution", type=int, help="model resolution (default: the config's data.resolution)")
    add_config_argument(p, "for widths/latent size")


def main(args: argparse.Namespace) -> int:
    # through the config's validation: --resolution 0 is an error, never "use the default"
    config = config_from_args(args, {"data.resolution": args.resolution})
    print(summarize(args.model, config.model, config.data.resolution))
    return 0
