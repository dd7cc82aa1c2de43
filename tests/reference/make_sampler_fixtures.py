"""Reference trajectories of the samplers memlab reimplements, produced by the reference code
itself: EDM's `edm_sampler` (NVlabs/edm, generate.py) and improved-diffusion's
`p_sample_loop_progressive` / `ddim_sample_loop_progressive` (openai/improved-diffusion,
gaussian_diffusion.py + respace.py). Nothing is copied: both are imported from checkouts.

Every sampler runs on a closed-form denoiser (so no network weights are involved):
- `optimal`: the optimal denoiser of K fixed images, D(x; σ) = Σ softmax(−‖x − yᵢ‖²/2σ²)ᵢ yᵢ;
- `gauss`: the optimal denoiser of N(0, 1) data, D(x; σ) = x / (1 + σ²) (leaves [−1, 1], so
  improved-diffusion's clipping is exercised).
Both references run in float64 (see `_extract_f64`). The noise each sampler draws is recorded in the order it is drawn, and every denoiser call's
input (x, σ) is recorded in σ-space (x_σ = x_t / √ᾱ_t for improved-diffusion), so memlab's test
(`tests/samplers.rs`) replays the same noise and compares every call and the output.

Usage (PyTorch, numpy, safetensors, click, tqdm, pillow in the Python environment):
  EDM_DIR=path/to/edm IDDPM_DIR=path/to/improved-diffusion \
    python tests/reference/make_sampler_fixtures.py tests/reference/samplers.safetensors
"""

import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.environ["EDM_DIR"])
sys.path.insert(0, os.environ["IDDPM_DIR"])
import generate as edm_generate  # noqa: E402  (NVlabs/edm)
from improved_diffusion import gaussian_diffusion as gd  # noqa: E402
from improved_diffusion.respace import SpacedDiffusion, space_timesteps  # noqa: E402

RANDN_LIKE = torch.randn_like  # improved-diffusion draws through `th.randn_like`: patched below
torch.manual_seed(0)
B, C, H, W = 3, 2, 3, 3
K = 4
IMAGES = (torch.rand(K, C, H, W, dtype=torch.float64) * 2 - 1)


def optimal(x, sigma):
    x = x.to(torch.float64)
    s = float(sigma)
    d2 = ((x[:, None] - IMAGES[None]) ** 2).flatten(2).sum(-1)  # [B, K]
    w = torch.softmax(-d2 / (2 * s * s), dim=1)
    return torch.einsum("bk,kchw->bchw", w, IMAGES)


def gauss(x, sigma):
    s = float(sigma)
    return x.to(torch.float64) / (1 + s * s)


DENOISERS = {"optimal": optimal, "gauss": gauss}
out = {"images": IMAGES.clone()}


class Recorder:
    """Records denoiser inputs (σ-space) and noise draws."""

    def __init__(self):
        self.inputs, self.sigmas, self.noise = [], [], []

    def randn_like(self, x):
        z = RANDN_LIKE(x)
        self.noise.append(z.to(torch.float64).clone())
        return z

    def save(self, name, sigmas, x0, final, extra=None):
        out[f"{name}/sigmas"] = torch.as_tensor(sigmas, dtype=torch.float64)
        out[f"{name}/x0"] = x0.to(torch.float64).clone()
        out[f"{name}/inputs"] = torch.stack(self.inputs)
        out[f"{name}/input_sigmas"] = torch.as_tensor(self.sigmas, dtype=torch.float64)
        if self.noise:
            out[f"{name}/noise"] = torch.stack(self.noise)
        out[f"{name}/out"] = final.to(torch.float64).clone()
        for k, v in (extra or {}).items():
            out[f"{name}/{k}"] = torch.as_tensor(v, dtype=torch.float64)


def edm_case(name, den, steps, churn=0.0, s_min=0.0, s_max=float("inf"), s_noise=1.0):
    rec = Recorder()

    class Net:
        sigma_min, sigma_max = 0.0, float("inf")

        def round_sigma(self, s):
            return torch.as_tensor(s)

        def __call__(self, x, sigma, labels=None):
            rec.inputs.append(x.to(torch.float64).clone())
            rec.sigmas.append(float(sigma))
            return DENOISERS[den](x, sigma)

    latents = torch.randn(B, C, H, W, dtype=torch.float64)
    final = edm_generate.edm_sampler(
        Net(), latents, randn_like=rec.randn_like, num_steps=steps, sigma_min=0.002,
        sigma_max=80, rho=7, S_churn=churn, S_min=s_min, S_max=s_max, S_noise=s_noise,
    )
    step_indices = torch.arange(steps, dtype=torch.float64)
    t = (80 ** (1 / 7) + step_indices / (steps - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    sigmas = torch.cat([t, torch.zeros(1, dtype=torch.float64)])
    rec.save(name, sigmas, latents * sigmas[0], final,
             {"churn": [churn, s_min, min(s_max, 1e300), s_noise]})


def _extract_f64(arr, timesteps, broadcast_shape):
    """improved-diffusion's `_extract_into_tensor` without its `.float()`: the reference runs
    in float64 here. In float32 its x̂₀ = √(1/ᾱ)·x_t − √(1/ᾱ − 1)·ε cancels two terms of
    size ~1e4 at the cosine schedule's last step (ᾱ ≈ 1e-8), an error of ~1e-4 that belongs to
    float32, not to the algorithm being compared."""
    res = torch.from_numpy(arr)[timesteps]
    while len(res.shape) < len(broadcast_shape):
        res = res[..., None]
    return res.expand(broadcast_shape)


gd._extract_into_tensor = _extract_f64


def iddpm_case(name, den, schedule, steps, ddim):
    rec = Recorder()
    betas = gd.get_named_beta_schedule(schedule, 1000)
    use = space_timesteps(1000, [steps])
    diffusion = SpacedDiffusion(
        use_timesteps=use, betas=betas, model_mean_type=gd.ModelMeanType.EPSILON,
        model_var_type=gd.ModelVarType.FIXED_SMALL, loss_type=gd.LossType.MSE,
        rescale_timesteps=False,
    )
    base_ac = np.cumprod(1.0 - betas)

    def model(x_t, t):
        # t is the original timestep (SpacedDiffusion maps respaced indices back).
        ac = float(base_ac[int(t[0])])
        sigma = ((1 - ac) / ac) ** 0.5
        x_s = x_t.to(torch.float64) / ac ** 0.5
        rec.inputs.append(x_s.clone())
        rec.sigmas.append(sigma)
        return (x_s - DENOISERS[den](x_s, sigma)) / sigma

    noise = torch.randn(B, C, H, W, dtype=torch.float64)
    gd.th.randn_like = rec.randn_like  # the module's own draws, recorded
    loop = diffusion.ddim_sample_loop_progressive if ddim else diffusion.p_sample_loop_progressive
    final = None
    for o in loop(model, (B, C, H, W), noise=noise, clip_denoised=True, device="cpu"):
        final = o["sample"]
    gd.th.randn_like = RANDN_LIKE
    ts = sorted(use, reverse=True)
    sig = [((1 - base_ac[t]) / base_ac[t]) ** 0.5 for t in ts] + [0.0]
    rec.save(name, sig, noise.to(torch.float64) / base_ac[ts[0]] ** 0.5, final)


edm_case("edm_heun_optimal", "optimal", 8)
edm_case("edm_churn_optimal", "optimal", 10, churn=30, s_min=0.01, s_max=10, s_noise=1.007)
edm_case("edm_churn_gauss", "gauss", 10, churn=40, s_min=0.05, s_max=50, s_noise=1.003)
for sched in ["linear", "cosine"]:
    for den in ["optimal", "gauss"]:
        iddpm_case(f"iddpm_ddpm_{sched}_{den}", den, sched, 10, ddim=False)
        iddpm_case(f"iddpm_ddim_{sched}_{den}", den, sched, 10, ddim=True)

save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[1])
print(f"wrote {len(out)} tensors to {sys.argv[1]}")
