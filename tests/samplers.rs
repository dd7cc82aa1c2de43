//! memlab's samplers against the reference samplers' own trajectories (issue 11): EDM's
//! `edm_sampler` (Heun, with and without churn) and improved-diffusion's `p_sample_loop` /
//! `ddim_sample_loop` (respaced `linear` and `cosine` schedules, `clip_denoised=True`), run by
//! `tests/reference/make_sampler_fixtures.py` on closed-form denoisers with recorded noise.
//! The same denoiser, σ steps and noise must give the same denoiser inputs at every call and
//! the same output: to 1e-5 relative to max(1, |x|) (memlab samples in float32, EDM in
//! float64, improved-diffusion in float32 with float64 coefficients).

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData};
use memlab::config::choices::{Churn, Sampler, SamplerSettings};
use memlab::diffusion::sampler::sample;
use memlab_e2e::root;
use safetensors::SafeTensors;

struct Fixture {
    tensors: HashMap<String, (Vec<usize>, Vec<f64>)>,
}

impl Fixture {
    fn load() -> Fixture {
        let bytes = std::fs::read(root().join("tests/reference/samplers.safetensors"))
            .expect("tests/reference/samplers.safetensors");
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let tensors = st
            .tensors()
            .into_iter()
            .map(|(name, v)| {
                assert_eq!(v.dtype(), safetensors::Dtype::F64, "{name}");
                let data = v
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect();
                (name, (v.shape().to_vec(), data))
            })
            .collect();
        Fixture { tensors }
    }

    fn get(&self, name: &str) -> &(Vec<usize>, Vec<f64>) {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no {name}"))
    }
}

fn tensor(shape: &[usize], v: &[f64]) -> Tensor<4> {
    let data: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::<4>::from_data(
        TensorData::new(data, [shape[0], shape[1], shape[2], shape[3]]),
        &memlab::engine::cpu(),
    )
}

fn values(t: &Tensor<4>) -> Vec<f64> {
    t.to_data().convert::<f64>().try_to_vec::<f64>().unwrap()
}

/// The closed-form denoisers of the fixture script, in f64.
fn denoise(kind: &str, images: &[f64], per: usize, x: &[f64], sigma: f64) -> Vec<f64> {
    match kind {
        "gauss" => x.iter().map(|v| v / (1.0 + sigma * sigma)).collect(),
        "optimal" => {
            let k = images.len() / per;
            let mut out = Vec::with_capacity(x.len());
            for xi in x.chunks(per) {
                let logits: Vec<f64> = images
                    .chunks(per)
                    .map(|y| {
                        -xi.iter()
                            .zip(y)
                            .map(|(a, b)| (a - b) * (a - b))
                            .sum::<f64>()
                            / (2.0 * sigma * sigma)
                    })
                    .collect();
                let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                let z: f64 = w.iter().sum();
                for p in 0..per {
                    out.push((0..k).map(|j| w[j] * images[j * per + p]).sum::<f64>() / z);
                }
            }
            out
        }
        _ => unreachable!(),
    }
}

fn close(a: &[f64], b: &[f64], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let tol = 1e-5 * y.abs().max(1.0);
        assert!(
            (x - y).abs() <= tol,
            "{what}[{i}]: memlab {x}, reference {y} (|Δ| {:.2e} > {tol:.1e})",
            (x - y).abs()
        );
    }
}

/// Replays one fixture case through memlab's sampler.
fn check_case(fx: &Fixture, name: &str, settings: SamplerSettings, den: &str) {
    let images = &fx.get("images").1;
    let (xshape, x0) = fx.get(&format!("{name}/x0"));
    let per: usize = xshape[1..].iter().product();
    let sigmas = &fx.get(&format!("{name}/sigmas")).1;
    let (_, inputs) = fx.get(&format!("{name}/inputs"));
    let input_sigmas = &fx.get(&format!("{name}/input_sigmas")).1;
    let noise = fx
        .tensors
        .get(&format!("{name}/noise"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let batch = x0.len();
    // Which reference draws memlab consumes: EDM draws at every step (scaled by 0 when γ = 0),
    // improved-diffusion at every step (masked at t = 0); memlab draws only what it uses.
    let n = sigmas.len() - 1;
    let used: Vec<usize> = match settings.kind {
        Sampler::Heun | Sampler::Euler => (0..n)
            .filter(|&i| {
                let c = settings.churn;
                c.s_churn > 0.0 && c.s_min <= sigmas[i] && sigmas[i] <= c.s_max
            })
            .collect(),
        Sampler::Ddpm => (0..n - 1).collect(),
        Sampler::Ddim => Vec::new(),
    };
    let mut draws = used.iter().map(|&i| &noise[i * batch..(i + 1) * batch]);
    let mut seen: Vec<(f64, Vec<f64>)> = Vec::new();
    let mut d = |x: Tensor<4>, s: f64| {
        let v = values(&x);
        let out = denoise(den, images, per, &v, s);
        seen.push((s, v));
        Ok(tensor(xshape, &out))
    };
    let mut nz = |_: &Tensor<4>| tensor(xshape, draws.next().expect("a recorded draw"));
    let out = sample(
        settings,
        sigmas,
        tensor(xshape, x0),
        &mut d,
        &mut nz,
        &mut |_| (),
    )
    .unwrap();
    assert_eq!(seen.len(), input_sigmas.len(), "{name}: denoiser calls");
    for (c, (s, v)) in seen.iter().enumerate() {
        let want = input_sigmas[c];
        assert!(
            (s - want).abs() <= 1e-9 * want.max(1.0),
            "{name}: call {c} at σ {s}, reference σ {want}"
        );
        close(
            v,
            &inputs[c * batch..(c + 1) * batch],
            &format!("{name}: input of call {c}"),
        );
    }
    close(&values(&out), &fx.get(&format!("{name}/out")).1, name);
}

#[test]
fn heun_with_and_without_churn_follows_edm_sampler() {
    let fx = Fixture::load();
    for (name, den) in [
        ("edm_heun_optimal", "optimal"),
        ("edm_churn_optimal", "optimal"),
        ("edm_churn_gauss", "gauss"),
    ] {
        let c = &fx.get(&format!("{name}/churn")).1;
        let settings = SamplerSettings {
            kind: Sampler::Heun,
            churn: Churn {
                s_churn: c[0],
                s_min: c[1],
                s_max: c[2],
                s_noise: c[3],
            },
            clip_denoised: false,
        };
        check_case(&fx, name, settings, den);
    }
}

#[test]
fn ddpm_and_ddim_follow_improved_diffusion_loops() {
    let fx = Fixture::load();
    for sched in ["linear", "cosine"] {
        for den in ["optimal", "gauss"] {
            for (kind, tag) in [(Sampler::Ddpm, "ddpm"), (Sampler::Ddim, "ddim")] {
                let name = format!("iddpm_{tag}_{sched}_{den}");
                check_case(&fx, &name, SamplerSettings::plain(kind), den);
            }
        }
    }
}

/// The schedules' own σ steps are the reference's: EDM's ρ-spaced t_steps and
/// improved-diffusion's respaced timesteps (`space_timesteps(1000, [10])`).
#[test]
fn schedule_plugins_give_the_reference_sigma_steps() {
    let fx = Fixture::load();
    let reg = memlab::plugins::Registry::load(&[]).unwrap();
    for (schedule, case, steps) in [
        ("edm", "edm_heun_optimal", 8),
        ("edm", "edm_churn_gauss", 10),
        ("linear", "iddpm_ddpm_linear_gauss", 10),
        ("cosine", "iddpm_ddim_cosine_gauss", 10),
    ] {
        let ours = reg
            .schedule(schedule, "", 0)
            .unwrap()
            .sampling_sigmas(steps)
            .unwrap();
        let theirs = &fx.get(&format!("{case}/sigmas")).1;
        assert_eq!(ours.len(), theirs.len(), "{schedule}");
        for (a, b) in ours.iter().zip(theirs) {
            assert!(
                (a - b).abs() <= 1e-9 * b.max(1.0),
                "{schedule}: σ {a} vs {b}"
            );
        }
    }
}
