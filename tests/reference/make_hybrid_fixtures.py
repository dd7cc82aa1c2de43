"""Reference values of improved-diffusion's hybrid objective and learned-variance sampling,
produced by the reference code itself (openai/improved-diffusion, gaussian_diffusion.py,
respace.py, losses.py). Nothing is copied: the package is imported from a checkout.

The network is the `unet_class_sigma` fixture of `make_network_fixtures.py` (a small
`UNetModel` with `learn_sigma=True`, 5 classes; its random weights are read from
`tests/reference/networks/unet_class_sigma.weights.safetensors`, so both scripts agree on
them). For the `linear` and `cosine` schedules with T = 1000, `rescale_timesteps=True`,
`ModelMeanType.EPSILON`, `ModelVarType.LEARNED_RANGE` (as improved-diffusion's
`create_gaussian_diffusion` with `learn_sigma=True`) the script writes, under
`<schedule>.`:
- `train.x_start`, `train.t` (int64), `train.noise`, `train.labels` (int64): inputs of
  `GaussianDiffusion.training_losses` (images quantised to 256 levels in [−1, 1], as the
  reference's data loader gives, so the decoder's edge cases ±1 occur; t includes 0, where the
  VLB term is the decoder NLL);
- `train.mse`, `train.vb`, `train.loss`: the per-example terms with `LossType.MSE`
  (loss = mse + vb, vb in bits per dimension) and `train.loss_rescaled` with
  `LossType.RESCALED_MSE` (vb × T/1000, improved-diffusion's default through
  `rescale_learned_sigmas=True`, which the paper configurations use);
- `full.x`, `full.t`, `full.labels`, `full.noise`: inputs of `p_sample` on the full 1000-step
  chain (x in x_t-space; `noise` is what `th.randn_like` returns inside `p_sample`), and
  `full.mean`, `full.log_variance`, `full.pred_xstart`, `full.sample`, with
  `clip_denoised=True` (the sampling default);
- `respaced.*`: the same for `SpacedDiffusion(space_timesteps(1000, "10"))`, t being the
  respaced index 0..9 (the model sees the original timestep).
All computed in float32, as the reference runs. `tests/hybrid.rs` compares memlab's values.

Usage (PyTorch, numpy, safetensors in the Python environment):
  IDDPM_DIR=path/to/improved-diffusion \
    python tests/reference/make_hybrid_fixtures.py tests/reference/hybrid.safetensors
"""

import os
import sys

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.environ["IDDPM_DIR"])
from improved_diffusion import gaussian_diffusion as gd  # noqa: E402
from improved_diffusion.respace import SpacedDiffusion, space_timesteps  # noqa: E402
from improved_diffusion.unet import UNetModel  # noqa: E402

OUT = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
RANDN_LIKE = torch.randn_like

# The unet_class_sigma network of make_network_fixtures.py.
RES, C = 8, 3
net = UNetModel(in_channels=C, model_channels=32, out_channels=2 * C, num_res_blocks=1,
                attention_resolutions=(1,), dropout=0.0, channel_mult=(1,), conv_resample=True,
                num_classes=5, num_heads=4, use_scale_shift_norm=True).eval()
weights = load_file(os.path.join(HERE, "networks", "unet_class_sigma.weights.safetensors"))
net.load_state_dict({k: v.to(torch.float32) for k, v in weights.items()})

gen = torch.Generator().manual_seed(31)
out = {}


def diffusion(schedule, loss_type, use_timesteps=None):
    kw = dict(betas=gd.get_named_beta_schedule(schedule, 1000),
              model_mean_type=gd.ModelMeanType.EPSILON,
              model_var_type=gd.ModelVarType.LEARNED_RANGE,
              loss_type=loss_type, rescale_timesteps=True)
    if use_timesteps is None:
        return gd.GaussianDiffusion(**kw)
    return SpacedDiffusion(use_timesteps=use_timesteps, **kw)


def images(n):
    """Images on the 256-level grid of [−1, 1], with some pixels at the ends."""
    u = torch.randint(0, 256, [n, C, RES, RES], generator=gen)
    u[:, 0, 0, :] = 0
    u[:, 1, 0, :] = 255
    return u.to(torch.float32) / 127.5 - 1


def p_sample(diff, prefix, ts):
    n = len(ts)
    x = torch.randn([n, C, RES, RES], generator=gen) * 1.5
    t = torch.tensor(ts, dtype=torch.int64)
    labels = torch.randint(0, 5, [n], generator=gen)
    noise = torch.randn([n, C, RES, RES], generator=gen)
    gd.th.randn_like = lambda like: noise.clone()
    try:
        with torch.no_grad():
            pmv = diff.p_mean_variance(net, x, t, clip_denoised=True,
                                       model_kwargs={"y": labels})
            s = diff.p_sample(net, x, t, clip_denoised=True, model_kwargs={"y": labels})
    finally:
        gd.th.randn_like = RANDN_LIKE
    out.update({
        f"{prefix}.x": x, f"{prefix}.t": t, f"{prefix}.labels": labels,
        f"{prefix}.noise": noise, f"{prefix}.mean": pmv["mean"],
        f"{prefix}.log_variance": pmv["log_variance"], f"{prefix}.pred_xstart": s["pred_xstart"],
        f"{prefix}.sample": s["sample"],
    })


for schedule in ["linear", "cosine"]:
    ts = [0, 0, 1, 2, 250, 600, 998, 999]
    n = len(ts)
    x_start = images(n)
    t = torch.tensor(ts, dtype=torch.int64)
    noise = torch.randn([n, C, RES, RES], generator=gen)
    labels = torch.randint(0, 5, [n], generator=gen)
    with torch.no_grad():
        plain = diffusion(schedule, gd.LossType.MSE).training_losses(
            net, x_start, t, model_kwargs={"y": labels}, noise=noise)
        rescaled = diffusion(schedule, gd.LossType.RESCALED_MSE).training_losses(
            net, x_start, t, model_kwargs={"y": labels}, noise=noise)
    p = f"{schedule}.train"
    out.update({
        f"{p}.x_start": x_start, f"{p}.t": t, f"{p}.noise": noise, f"{p}.labels": labels,
        f"{p}.mse": plain["mse"], f"{p}.vb": plain["vb"], f"{p}.loss": plain["loss"],
        f"{p}.loss_rescaled": rescaled["loss"],
    })
    p_sample(diffusion(schedule, gd.LossType.MSE), f"{schedule}.full", [0, 1, 2, 500, 999])
    p_sample(diffusion(schedule, gd.LossType.MSE, space_timesteps(1000, "10")),
             f"{schedule}.respaced", [0, 1, 2, 5, 9])
    print(schedule, "vb", plain["vb"].tolist())

save_file({k: v.contiguous() for k, v in out.items()}, OUT,
          metadata={"network": "unet_class_sigma", "steps": "1000", "respaced": "10"})
print(OUT, os.path.getsize(OUT), "bytes")
