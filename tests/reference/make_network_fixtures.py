"""Reference outputs of the networks memlab reimplements, produced by the reference code itself:
improved-diffusion's `UNetModel` (openai/improved-diffusion, improved_diffusion/unet.py) and
EDM's `SongUNet` in its DDPM++ configuration and with its other options (skip / residual
encoder, skip decoder, Fourier embedding with `channel_mult_noise = 2`, resample filter
`[1, 3, 3, 1]`, `augment_dim`: NCSN++ and neighbours) with `VPPrecond`, `VEPrecond` and
`EDMPrecond` (NVlabs/edm, training/networks.py). Nothing is copied: both are imported from
checkouts.

For each small configuration the script builds the reference network, replaces every parameter
with random values (the references zero-initialise their output layers, which would make the
outputs trivial), and writes, as safetensors under OUT_DIR:
- `<name>.weights.safetensors`: the network's `state_dict()` exactly as PyTorch names and lays
  it out (EDM's `*.resample_filter` and `map_noise.freqs` buffers included; the Fourier
  frequencies are drawn from the config's generator), stored as bfloat16 to keep the committed
  fixtures small; the reference itself runs on these bf16 values widened to float32, so the
  comparison is exact up to float32 arithmetic;
- `<name>.io.safetensors`: inputs `x` [N, C, H, W], `noise` [N] (the network's noise label:
  the timestep for UNetModel, c_noise for SongUNet), `labels` [N] (int64, conditional configs
  only), the raw output `F` (all output channels, learned-variance ones included), and for
  SongUNet configs `sigma` [N] with `D_edm`, `D_vp`, `D_ve`: the preconditioned denoisers
  D(x; σ) of EDMPrecond / VPPrecond / VEPrecond (default constants) wrapping the same network
  (for Fourier embeddings, `D_vp`'s network gets the float32 rounding of VP's exact c_noise:
  see `ExactNoise` below). `augment_dim` configs run with
  `augment_labels = None` (memlab has no augmentation pipeline and feeds zeros: the same).
All references run in float32 (as they do in practice), in eval mode.

The configuration of each network, in memlab's parameter names, is in the io file's metadata
(`memlab_params`, TOML; `architecture`). `tests/networks.rs` loads the weights through
`architecture.init_from`'s loader and compares, requiring max |Δ| ≤ 1e-4.

Usage (PyTorch, numpy, safetensors in the Python environment):
  EDM_DIR=path/to/edm IDDPM_DIR=path/to/improved-diffusion \
    python tests/reference/make_network_fixtures.py tests/reference/networks [NAME ...]
With NAMEs, only those fixtures are written (the others are left as they are).
"""

import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.environ["EDM_DIR"])
sys.path.insert(0, os.environ["IDDPM_DIR"])
from improved_diffusion.unet import UNetModel  # noqa: E402  (openai/improved-diffusion)
from training import networks as edm  # noqa: E402  (NVlabs/edm)

OUT = sys.argv[1]
ONLY = set(sys.argv[2:])
os.makedirs(OUT, exist_ok=True)


def wanted(name):
    return not ONLY or name in ONLY
N = 2


def randomize(net, gen):
    """Random parameters of a sensible scale: N(0, 1/fan_in) weights, N(0, 0.1²) biases, norm
    gains 1 + N(0, 0.1²); rounded to bfloat16 (the stored precision)."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if p.dim() > 1:
                fan_in = p[0].numel()
                v = torch.randn(p.shape, generator=gen) / np.sqrt(fan_in)
            elif "norm" in name or name.endswith(("in_layers.0.weight", "out_layers.0.weight",
                                                   "out.0.weight")):
                v = 1 + 0.1 * torch.randn(p.shape, generator=gen)
            else:
                v = 0.1 * torch.randn(p.shape, generator=gen)
            p.copy_(v.to(torch.bfloat16).to(torch.float32))


def save_weights(name, net):
    sd = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in net.state_dict().items()}
    save_file(sd, os.path.join(OUT, f"{name}.weights.safetensors"))


def save_io(name, arch, params_toml, tensors):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    meta = {"architecture": arch, "memlab_params": params_toml}
    save_file(tensors, os.path.join(OUT, f"{name}.io.safetensors"), metadata=meta)


def toml_list(xs):
    return "[" + ", ".join(str(x) for x in xs) + "]"


# improved-diffusion UNetModel configurations: (name, image size, channels in, kwargs).
# `attention_resolutions` of UNetModel are downsampling factors; memlab's are feature-map sizes.
# conv_resample=False is not covered: the reference's `Downsample` then calls
# `avg_pool_nd(stride)`, which fails (AvgPool2d without a kernel size).
UNETS = [
    ("unet_plain", 8, 3, dict(model_channels=32, channel_mult=(1,), num_res_blocks=1,
                              attention_resolutions=(), num_heads=1,
                              use_scale_shift_norm=False, num_classes=None, learn_sigma=False,
                              conv_resample=True)),
    ("unet_ssn_attn", 8, 3, dict(model_channels=32, channel_mult=(1, 1), num_res_blocks=1,
                                 attention_resolutions=(2,), num_heads=2,
                                 use_scale_shift_norm=True, num_classes=None,
                                 learn_sigma=False, conv_resample=True)),
    ("unet_class_sigma", 8, 3, dict(model_channels=32, channel_mult=(1,), num_res_blocks=1,
                                    attention_resolutions=(1,), num_heads=4,
                                    use_scale_shift_norm=True, num_classes=5, learn_sigma=True,
                                    conv_resample=True)),
]

for i, (name, res, c_img, kw) in enumerate(UNETS):
    if not wanted(name):
        continue
    gen = torch.Generator().manual_seed(1000 + i)
    kw = dict(kw)
    learn_sigma = kw.pop("learn_sigma")
    net = UNetModel(in_channels=c_img, out_channels=c_img * (2 if learn_sigma else 1),
                    dropout=0.0, **kw).eval()
    randomize(net, gen)
    x = torch.randn([N, c_img, res, res], generator=gen)
    t = torch.tensor([3.0, 517.25])
    y = torch.tensor([1, 4]) if kw["num_classes"] else None
    with torch.no_grad():
        f = net(x, t, y=y)
    params = "\n".join([
        f"channels = {kw['model_channels']}",
        f"channel_mult = {toml_list(kw['channel_mult'])}",
        f"res_blocks = {kw['num_res_blocks']}",
        f"attention_resolutions = {toml_list(res // d for d in kw['attention_resolutions'])}",
        f"heads = {kw['num_heads']}",
        "dropout = 0.0",
        f"scale_shift = {str(kw['use_scale_shift_norm']).lower()}",
        f"learn_sigma = {str(learn_sigma).lower()}",
        f"conv_resample = {str(kw['conv_resample']).lower()}",
    ])
    io = {"x": x, "noise": t, "F": f}
    if y is not None:
        io["labels"] = y.to(torch.int64)
    save_weights(name, net)
    save_io(name, "unet", params, io)
    print(name, sum(p.numel() for p in net.parameters()), "parameters")

# EDM SongUNet in its DDPM++ configuration (as EDM's train.py sets it for --arch=ddpmpp), and
# configurations with the other options (NCSN++ is --arch=ncsnpp: fourier, channel_mult_noise 2,
# residual encoder, [1, 3, 3, 1]). Each entry: (name, resolution, channels, label_dim, kwargs);
# kwargs override DDPMPP.
DDPMPP = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard",
              channel_mult_noise=1, resample_filter=[1, 1], channel_mult_emb=4, dropout=0.0)
SONGS = [
    ("ddpmpp", 8, 3, 0, dict(model_channels=16, channel_mult=[1, 2], num_blocks=1,
                             attn_resolutions=[4])),
    ("ddpmpp_class", 8, 3, 4, dict(model_channels=16, channel_mult=[1, 1], num_blocks=1,
                                   attn_resolutions=[8])),
    ("songunet_skip", 8, 3, 0, dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1,
                                    attn_resolutions=[4], encoder_type="skip",
                                    decoder_type="skip")),
    ("songunet_residual", 8, 3, 0, dict(model_channels=16, channel_mult=[1, 2], num_blocks=1,
                                        attn_resolutions=[4], encoder_type="residual")),
    ("ncsnpp", 8, 3, 0, dict(model_channels=16, channel_mult=[1, 2, 2], num_blocks=1,
                             attn_resolutions=[4], embedding_type="fourier",
                             channel_mult_noise=2, encoder_type="residual",
                             resample_filter=[1, 3, 3, 1])),
    ("ncsnpp_skip_class_aug", 8, 3, 3, dict(model_channels=16, channel_mult=[1, 2, 2],
                                            num_blocks=1, attn_resolutions=[4],
                                            embedding_type="fourier", channel_mult_noise=2,
                                            encoder_type="skip", decoder_type="skip",
                                            resample_filter=[1, 3, 3, 1], augment_dim=9)),
]
for i, (name, res, c_img, label_dim, kw) in enumerate(SONGS):
    if not wanted(name):
        continue
    gen = torch.Generator().manual_seed(2000 + i)
    kw = dict(DDPMPP, **kw)
    pre = {
        "edm": edm.EDMPrecond(res, c_img, label_dim=label_dim, model_type="SongUNet", **kw),
        "vp": edm.VPPrecond(res, c_img, label_dim=label_dim, model_type="SongUNet", **kw),
        "ve": edm.VEPrecond(res, c_img, label_dim=label_dim, model_type="SongUNet", **kw),
    }
    fourier = kw["embedding_type"] == "fourier"
    net = pre["edm"].model
    randomize(net, gen)
    if fourier:
        with torch.no_grad():
            f = 16 * torch.randn(net.map_noise.freqs.shape, generator=gen)
            net.map_noise.freqs.copy_(f.to(torch.bfloat16).to(torch.float32))
    for p in pre.values():
        p.model = net
        p.eval()
    x = torch.randn([N, c_img, res, res], generator=gen)
    noise = torch.tensor([-0.7, 1.1])
    sigma = torch.tensor([0.3, 2.5])
    if fourier:
        # VPPrecond's c_noise = (M − 1)·sigma_inv(σ) reaches ~440 here, and computed in float32
        # it is one ulp (3e-5) away from the float32 rounding of its exact value, which is what
        # memlab feeds the network; Fourier features multiply it by 2π·f ~ 10², so that ulp
        # moves D by ~1e-3. The VP wrapper's network therefore gets the rounded exact c_noise
        # (everything else in VPPrecond runs unchanged).
        vp = pre["vp"]
        exact = ((vp.M - 1) * vp.sigma_inv(sigma.double())).float()

        class ExactNoise(torch.nn.Module):
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x, noise_labels, class_labels=None, **kw):
                return self.net(x, exact.to(noise_labels.dtype), class_labels, **kw)

        vp.model = ExactNoise(net)

    labels = torch.tensor([2, 0]) if label_dim else None
    onehot = torch.nn.functional.one_hot(labels, label_dim).float() if label_dim else None
    io = {"x": x, "noise": noise, "sigma": sigma}
    with torch.no_grad():
        io["F"] = net(x, noise, onehot)
        for k, p in pre.items():
            io[f"D_{k}"] = p(x, sigma, onehot)
    if labels is not None:
        io["labels"] = labels.to(torch.int64)
    lines = [
        f"channels = {kw['model_channels']}",
        f"channel_mult = {toml_list(kw['channel_mult'])}",
        f"channel_mult_emb = {kw['channel_mult_emb']}",
        f"num_blocks = {kw['num_blocks']}",
        f"attn_resolutions = {toml_list(kw['attn_resolutions'])}",
        "dropout = 0.0",
        f'embedding = "{kw["embedding_type"]}"',
    ]
    # Options beyond DDPM++ only where used (the DDPM++ fixtures' metadata stays as it was).
    for key, ref in [("channel_mult_noise", "channel_mult_noise"), ("encoder", "encoder_type"),
                     ("decoder", "decoder_type"), ("resample_filter", "resample_filter"),
                     ("augment_dim", "augment_dim")]:
        if kw.get(ref, DDPMPP.get(ref, 0)) != DDPMPP.get(ref, 0):
            v = kw[ref]
            lines.append(f"{key} = " + (toml_list(v) if isinstance(v, list)
                                        else f'"{v}"' if isinstance(v, str) else str(v)))
    save_weights(name, net)
    save_io(name, "ddpmpp", "\n".join(lines), io)
    print(name, sum(p.numel() for p in net.parameters()), "parameters")
