"""PyTorch reference for `memlab bench train`: the same network, the same step
(EDM-preconditioned denoising loss, backward, Adam), the same inference and Heun sampling,
timed the same way.

- `--arch unet` (default): improved-diffusion's UNet, written out below at the benchmark config.
- `--arch ddpmpp --edm PATH`: EDM's own `EDMPrecond(SongUNet)` imported from a checkout of
  NVlabs/edm (its `training/`, `torch_utils/`, `dnnlib/`; needs `pip install requests`).

Usage:  python3 bench/torch_unet.py [--threads 2] [--batch 32] [--res 32] [--steps 5]
Prints JSON. Needs `pip install torch numpy`; exits 0 with a message when torch is missing.
The network follows openai/improved-diffusion `unet.py` (UNetModel) at the config below.
"""
import argparse
import json
import math
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print(json.dumps({"skipped": "torch is not installed (pip install torch numpy)"}))
    sys.exit(0)


def gn(ch):
    return nn.GroupNorm(min(32, ch), ch)


def timestep_embedding(t, dim, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def zero(m):
    for p in m.parameters():
        p.detach().zero_()
    return m


class ResBlock(nn.Module):
    def __init__(self, ch, emb, out, dropout, scale_shift):
        super().__init__()
        self.scale_shift = scale_shift
        self.in_layers = nn.Sequential(gn(ch), nn.SiLU(), nn.Conv2d(ch, out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * out if scale_shift else out))
        self.out_norm = gn(out)
        self.out_rest = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), zero(nn.Conv2d(out, out, 3, padding=1)))
        self.skip = nn.Identity() if ch == out else nn.Conv2d(ch, out, 1)

    def forward(self, x, emb):
        h = self.in_layers(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        return self.skip(x) + self.out_rest(h)


class Attention(nn.Module):
    def __init__(self, ch, heads):
        super().__init__()
        self.heads = heads
        self.norm = gn(ch)
        self.qkv = nn.Conv1d(ch, 3 * ch, 1)
        self.proj = zero(nn.Conv1d(ch, ch, 1))

    def forward(self, x):
        b, c, h, w = x.shape
        qkv = self.qkv(self.norm(x).reshape(b, c, -1)).reshape(b * self.heads, 3 * c // self.heads, -1)
        q, k, v = qkv.chunk(3, dim=1)
        scale = 1 / math.sqrt(math.sqrt(c // self.heads))
        wgt = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)
        a = torch.einsum("bts,bcs->bct", wgt, v).reshape(b, c, -1)
        return x + self.proj(a).reshape(b, c, h, w)


class UNet(nn.Module):
    def __init__(self, ch=32, mult=(1, 2, 2), blocks=2, attn=(8,), heads=4, res=32, out_ch=3, dropout=0.0, scale_shift=False):
        super().__init__()
        emb = 4 * ch
        self.ch = ch
        self.time = nn.Sequential(nn.Linear(ch, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.inp = nn.ModuleList([nn.Conv2d(3, ch, 3, padding=1)])
        chans, cur, ds = [ch], ch, res
        self.kinds = []
        for lvl, m in enumerate(mult):
            for _ in range(blocks):
                layers = nn.ModuleList([ResBlock(cur, emb, m * ch, dropout, scale_shift)])
                cur = m * ch
                if ds in attn:
                    layers.append(Attention(cur, heads))
                self.inp.append(layers)
                chans.append(cur)
            if lvl != len(mult) - 1:
                self.inp.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                chans.append(cur)
                ds //= 2
        self.mid = nn.ModuleList([ResBlock(cur, emb, cur, dropout, scale_shift), Attention(cur, heads), ResBlock(cur, emb, cur, dropout, scale_shift)])
        self.out_blocks = nn.ModuleList()
        for lvl, m in list(enumerate(mult))[::-1]:
            for i in range(blocks + 1):
                layers = nn.ModuleList([ResBlock(cur + chans.pop(), emb, m * ch, dropout, scale_shift)])
                cur = m * ch
                if ds in attn:
                    layers.append(Attention(cur, heads))
                if lvl and i == blocks:
                    layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
                    layers.append(nn.Conv2d(cur, cur, 3, padding=1))
                    ds *= 2
                self.out_blocks.append(layers)
        self.out = nn.Sequential(gn(cur), nn.SiLU(), zero(nn.Conv2d(cur, out_ch, 3, padding=1)))

    def run(self, layers, h, emb):
        for l in layers:
            h = l(h, emb) if isinstance(l, ResBlock) else l(h)
        return h

    def forward(self, x, t):
        emb = self.time(timestep_embedding(t, self.ch))
        hs, h = [], x
        for layers in self.inp:
            h = self.run(layers, h, emb) if isinstance(layers, nn.ModuleList) else layers(h)
            hs.append(h)
        h = self.run(self.mid, h, emb)
        for layers in self.out_blocks:
            h = self.run(layers, torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--arch", choices=["unet", "ddpmpp"], default="unet")
    ap.add_argument("--edm", default=None, help="NVlabs/edm checkout (for --arch ddpmpp)")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--channel-mult", type=int, nargs="+", default=[1, 2, 2])
    ap.add_argument("--num-blocks", type=int, default=1)
    ap.add_argument("--attn-resolutions", type=int, nargs="+", default=[16])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--res", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--forward-batch", type=int, default=256)
    ap.add_argument("--forward-reps", type=int, default=8)
    ap.add_argument("--sample-batch", type=int, default=256)
    ap.add_argument("--sample-steps", type=int, default=18)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    sd = 0.5
    if a.arch == "unet":
        net = UNet(res=a.res)

        def precond(x, sigma):
            # EDM preconditioning around improved-diffusion's UNet (sigma: [B, 1, 1, 1]).
            c_skip = sd**2 / (sigma**2 + sd**2)
            c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
            c_in = 1 / (sigma**2 + sd**2).sqrt()
            return c_skip * x + c_out * net(c_in * x, (sigma.log() / 4).flatten())
    else:
        # EDM's own network definition (NVlabs/edm training/networks.py), DDPM++ settings.
        if not a.edm:
            print(json.dumps({"skipped": "--arch ddpmpp needs --edm PATH (a checkout of NVlabs/edm)"}))
            sys.exit(0)
        sys.path.insert(0, a.edm)
        from training.networks import EDMPrecond

        net = EDMPrecond(a.res, 3, model_type="SongUNet", model_channels=a.channels,
                         channel_mult=a.channel_mult, num_blocks=a.num_blocks,
                         attn_resolutions=a.attn_resolutions, dropout=0.0)

        def precond(x, sigma):
            return net(x, sigma.flatten())
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    times = []
    for i in range(a.steps + 1):
        y = torch.rand(a.batch, 3, a.res, a.res) * 2 - 1
        n = torch.randn_like(y)
        sigma = torch.exp(-1.2 + 1.2 * torch.randn(a.batch, 1, 1, 1))
        t0 = time.perf_counter()
        x = y + sigma * n
        d = precond(x, sigma)
        w = (sigma**2 + sd**2) / (sigma * sd) ** 2
        loss = (w * (d - y) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    times = times[1:]
    def forward_times(batch):
        out = []
        with torch.no_grad():
            for _ in range(a.forward_reps):
                x = torch.randn(batch, 3, a.res, a.res)
                t0 = time.perf_counter()
                precond(x, torch.ones(batch, 1, 1, 1))
                out.append(time.perf_counter() - t0)
        return out

    fwd = forward_times(a.forward_batch)
    small = forward_times(a.batch)

    def denoise(x, sigma):
        return precond(x, torch.full((x.shape[0], 1, 1, 1), sigma))

    sample_s = float("nan")
    if a.sample_batch > 0 and a.sample_steps > 0:
        # EDM's edm_sampler with S_churn = 0 (deterministic Heun), its σ steps (rho = 7).
        n, smin, smax, rho = a.sample_steps, 0.002, 80.0, 7.0
        i = torch.arange(n, dtype=torch.float64)
        steps = (smax ** (1 / rho) + i / (n - 1) * (smin ** (1 / rho) - smax ** (1 / rho))) ** rho
        steps = torch.cat([steps, torch.zeros(1, dtype=torch.float64)]).tolist()
        x = torch.randn(a.sample_batch, 3, a.res, a.res) * smax
        t0 = time.perf_counter()
        with torch.no_grad():
            for k in range(n):
                s, s2 = steps[k], steps[k + 1]
                d = (x - denoise(x, s)) / s
                x_next = x + (s2 - s) * d
                if k < n - 1:
                    d2 = (x_next - denoise(x_next, s2)) / s2
                    x_next = x + (s2 - s) * (0.5 * d + 0.5 * d2)
                x = x_next
        sample_s = time.perf_counter() - t0
    print(json.dumps({
        "framework": f"torch {torch.__version__}",
        "threads": torch.get_num_threads(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "batch": a.batch,
        "train_step_s": sorted(times)[len(times) // 2],
        "train_steps_s": times,
        "forward_batch": a.forward_batch,
        "forward_s": sorted(fwd)[len(fwd) // 2],
        "forward_all_s": fwd,
        "forward_small_s": sorted(small)[len(small) // 2],
        "sample_batch": a.sample_batch,
        "sample_steps": a.sample_steps,
        "sample_s": sample_s,
        "sample_images_per_s": a.sample_batch / sample_s,
    }, indent=2))


if __name__ == "__main__":
    main()
