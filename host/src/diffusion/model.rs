//! The denoiser D(x; σ, label): an architecture plugin wrapped in a schedule's
//! preconditioning (EDM's separation: formulation × network), and its training loss.

use abi_stable::std_types::{RNone, RSome};
use anyhow::{Result, bail};
use burn::tensor::{Device, DispatchTensor, Tensor, TensorData};
use indexmap::IndexMap;
use memlab_plugin_api::ffi::{ArchInfo, ForwardArgs, HostOps};

use crate::diffusion::vlb::{Chain, Hybrid};
use crate::engine::executor::{Executor, HostTensor, Mode};
use crate::engine::params::ParamStore;
use crate::engine::{self};
use crate::plugins::{ArchitectureHandle, ScheduleHandle};

/// A tensor's values as f64.
fn values<const D: usize>(t: Tensor<D>) -> Result<Vec<f64>> {
    t.into_data()
        .convert::<f64>()
        .try_to_vec::<f64>()
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// One training batch: clean images `y` and noise (both `N × C × H × W`, row-major), the σ of
/// each image, its labels (conditional models) and the seed of the step's dropout masks.
pub struct TrainBatch<'a> {
    /// Clean images.
    pub y: Vec<f32>,
    /// Standard normal noise, scaled by σ inside the loss.
    pub noise: Vec<f32>,
    /// Noise level per image.
    pub sigma: &'a [f64],
    /// Label per image, for conditional models.
    pub labels: Option<&'a [i64]>,
    /// Seed of the dropout masks.
    pub dropout_seed: u64,
}

/// An architecture under a noise formulation.
pub struct Model {
    /// The network (or closed-form denoiser).
    pub arch: ArchitectureHandle,
    /// The formulation.
    pub schedule: ScheduleHandle,
    /// The architecture's declarations.
    pub info: ArchInfo,
    /// Device the engine runs on (without autodiff).
    pub device: Device,
    /// Label classes (0 = unconditional).
    pub classes: u32,
    /// `[c, h, w]`.
    pub image_shape: [usize; 3],
    /// The training set, for architectures that asked for it.
    pub training_set: Option<DispatchTensor>,
    /// Number of training images in `training_set`.
    pub training_len: usize,
}

/// One forward pass: D, and the parts the hybrid loss and learned-variance sampling read.
struct Forward {
    /// D(x; σ).
    d: Tensor<4>,
    /// The network output F (its first C channels); `None` for `outputs_denoised`.
    f: Option<Tensor<4>>,
    /// The variance channels v (`learned_variance`).
    v: Option<Tensor<4>>,
    /// The preconditioning used.
    k: Coeffs,
}

/// Per-sample preconditioning values as device tensors `[n, 1, 1, 1]`.
struct Coeffs {
    c_skip: Vec<f32>,
    c_out: Vec<f32>,
    c_in: Vec<f32>,
    c_noise: Vec<f32>,
}

impl Model {
    fn coeffs(&self, sigma: &[f64]) -> Result<Coeffs> {
        let mut c = Coeffs {
            c_skip: vec![],
            c_out: vec![],
            c_in: vec![],
            c_noise: vec![],
        };
        for &s in sigma {
            if self.info.outputs_denoised {
                c.c_skip.push(0.0);
                c.c_out.push(1.0);
                c.c_in.push(1.0);
                c.c_noise.push(s as f32);
            } else {
                let p = self.schedule.precond(s)?;
                for v in [p.c_skip, p.c_out, p.c_in, p.c_noise] {
                    if !v.is_finite() {
                        bail!(
                            "{}: preconditioning at σ = {s} is not finite",
                            self.schedule.label()
                        );
                    }
                }
                c.c_skip.push(p.c_skip as f32);
                c.c_out.push(p.c_out as f32);
                c.c_in.push(p.c_in as f32);
                c.c_noise.push(p.c_noise as f32);
            }
        }
        Ok(c)
    }

    /// Runs D(x; σ) on `graph` (training or inference) and returns the `[n, c, h, w]` output.
    fn denoise_on(
        &self,
        graph: &mut Executor<'_>,
        x: Tensor<4>,
        sigma: &[f64],
        labels: Option<&[i64]>,
    ) -> Result<Tensor<4>> {
        Ok(self.forward_on(graph, x, sigma, labels)?.d)
    }

    /// Runs the network on `graph`: D(x; σ), and the raw output F and the variance channels
    /// when there are any.
    fn forward_on(
        &self,
        graph: &mut Executor<'_>,
        x: Tensor<4>,
        sigma: &[f64],
        labels: Option<&[i64]>,
    ) -> Result<Forward> {
        let [n, c, h, w] = x.dims();
        if sigma.len() != n {
            bail!("{} noise levels for {n} images", sigma.len());
        }
        if let Some(ts) = &self.training_set {
            let slot = HostTensor {
                t: ts.clone(),
                shape: vec![
                    self.training_len,
                    self.image_shape[0],
                    self.image_shape[1],
                    self.image_shape[2],
                ],
                int: false,
            };
            graph.set_training_set(slot);
        }
        let dev = graph.device().clone();
        let k = self.coeffs(sigma)?;
        let col =
            |v: &[f32]| Tensor::<4>::from_data(TensorData::new(v.to_vec(), [n, 1, 1, 1]), &dev);
        let x_in = if self.info.outputs_denoised {
            x.clone()
        } else {
            x.clone() * col(&k.c_in)
        };
        let xi = graph.insert(HostTensor {
            t: x_in.into_dispatch(),
            shape: vec![n, c, h, w],
            int: false,
        });
        let ni = graph.insert_data(k.c_noise.clone(), &[n])?;
        let li = match (labels, self.classes) {
            (Some(l), cl) if cl > 0 => {
                if l.len() != n {
                    bail!("{} labels for {n} images", l.len());
                }
                RSome(graph.insert_int(l.to_vec(), &[n])?)
            }
            _ => RNone,
        };
        let args = ForwardArgs {
            x: xi,
            noise: ni,
            labels: li,
            classes: self.classes,
        };
        let out = engine::forward(&self.arch, graph, args)?;
        graph.release(xi);
        graph.release(ni);
        if let RSome(l) = li {
            graph.release(l);
        }
        let expect_c = if self.info.learned_variance { 2 * c } else { c };
        if out.shape != [n, expect_c, h, w] {
            bail!(
                "{} returned shape {:?}; expected [{n}, {expect_c}, {h}, {w}]",
                self.arch.label(),
                out.shape
            );
        }
        let mut f = Tensor::<4>::from_dispatch(out.t);
        let mut v = None;
        if self.info.learned_variance {
            v = Some(f.clone().narrow(1, c, c));
            f = f.narrow(1, 0, c);
        }
        if self.info.outputs_denoised {
            return Ok(Forward {
                d: f,
                f: None,
                v,
                k,
            });
        }
        Ok(Forward {
            d: x * col(&k.c_skip) + f.clone() * col(&k.c_out),
            f: Some(f),
            v,
            k,
        })
    }

    /// D(x; σ) for sampling (inference mode, no autodiff). `x` lives on [`Model::device`].
    pub fn denoise(
        &self,
        params: &mut ParamStore,
        x: Tensor<4>,
        sigma: &[f64],
        labels: Option<&[i64]>,
    ) -> Result<Tensor<4>> {
        let mut graph = Executor::new(&self.device, Mode::Eval, params, 0);
        self.denoise_on(&mut graph, x, sigma, labels)
    }

    /// One training loss evaluation with gradients:
    /// `mean_i λ(σ_i) · mean_pixels (D(y_i + σ_i n_i; σ_i) − y_i)²`.
    /// Returns the loss and each parameter's gradient.
    pub fn loss_and_grads(
        &self,
        params: &mut ParamStore,
        batch: TrainBatch<'_>,
    ) -> Result<(f64, IndexMap<String, DispatchTensor>)> {
        let TrainBatch {
            y,
            noise,
            sigma,
            labels,
            dropout_seed,
        } = batch;
        let n = sigma.len();
        let mut graph = Executor::new(&self.device, Mode::Train, params, dropout_seed);
        let dev = graph.device().clone();
        let (y, _, x) = self.noised(&dev, y, noise, sigma);
        let d = self.denoise_on(&mut graph, x, sigma, labels)?;
        let mut weights = Vec::with_capacity(n);
        for &s in sigma {
            let wgt = self.schedule.loss_weight(s)?;
            if !wgt.is_finite() {
                bail!(
                    "{}: loss weight at σ = {s} is not finite",
                    self.schedule.label()
                );
            }
            weights.push((wgt / n as f64) as f32);
        }
        let wt = Tensor::<1>::from_data(TensorData::new(weights, [n]), &dev);
        let per = (d - y).powi_scalar(2).mean_dims(&[1, 2, 3]).reshape([n]);
        let loss = (per * wt).sum();
        let value = loss
            .clone()
            .into_data()
            .convert::<f64>()
            .try_to_vec::<f64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))?[0];
        let slot = HostTensor {
            t: loss.into_dispatch(),
            shape: vec![1],
            int: false,
        };
        let grads = engine::gradients(&graph, &slot)?;
        Ok((value, grads))
    }

    /// D(x; σ) and, for a `learned_variance` architecture, its variance channels v
    /// `[n, c, h, w]` (inference mode), for learned-variance sampling.
    pub fn denoise_with_variance(
        &self,
        params: &mut ParamStore,
        x: Tensor<4>,
        sigma: &[f64],
        labels: Option<&[i64]>,
    ) -> Result<(Tensor<4>, Option<Tensor<4>>)> {
        let mut graph = Executor::new(&self.device, Mode::Eval, params, 0);
        let out = self.forward_on(&mut graph, x, sigma, labels)?;
        Ok((out.d, out.v))
    }

    /// The batch as tensors on `dev`: clean images y, noise n and the noisy input
    /// x = y + σ·n (σ per image), the forward process every loss starts from.
    fn noised(
        &self,
        dev: &Device,
        y: Vec<f32>,
        noise: Vec<f32>,
        sigma: &[f64],
    ) -> (Tensor<4>, Tensor<4>, Tensor<4>) {
        let n = sigma.len();
        let [c, h, w] = self.image_shape;
        let y = Tensor::<4>::from_data(TensorData::new(y, [n, c, h, w]), dev);
        let nz = Tensor::<4>::from_data(TensorData::new(noise, [n, c, h, w]), dev);
        let sig: Vec<f32> = sigma.iter().map(|&s| s as f32).collect();
        let sig = Tensor::<4>::from_data(TensorData::new(sig, [n, 1, 1, 1]), dev);
        let x = y.clone() + nz.clone() * sig;
        (y, nz, x)
    }

    /// The hybrid objective's two terms per sample on `graph`: λ(σ)·mean (x̂₀ − y)² (for a
    /// discrete schedule λ = 1/σ², so this is improved-diffusion's ε-MSE `mse`) and the VLB
    /// term in bits per dimension ([`crate::diffusion::vlb::vb_terms`] with x̂₀ detached).
    fn hybrid_terms_on(
        &self,
        graph: &mut Executor<'_>,
        chain: &Chain,
        y: Vec<f32>,
        noise: Vec<f32>,
        sigma: &[f64],
        labels: Option<&[i64]>,
    ) -> Result<(Tensor<1>, Tensor<1>)> {
        let n = sigma.len();
        let ts = sigma
            .iter()
            .map(|&s| chain.timestep(s))
            .collect::<Result<Vec<usize>>>()?;
        let dev = graph.device().clone();
        let col = |v: Vec<f32>| Tensor::<4>::from_data(TensorData::new(v, [n, 1, 1, 1]), &dev);
        let (y, nz, x) = self.noised(&dev, y, noise, sigma);
        let out = self.forward_on(graph, x, sigma, labels)?;
        let Some(v) = out.v else {
            bail!(
                "{} outputs no variance: the hybrid loss needs a learned-variance architecture",
                self.arch.label()
            );
        };
        // x̂₀ − y without cancelling y against y + σ·n (σ reaches ~10⁴ for `cosine`):
        // (c_skip − 1)·y + c_skip·σ·n + c_out·F.
        let err = match out.f {
            Some(f) => {
                let k = &out.k;
                let skip1: Vec<f32> = k.c_skip.iter().map(|v| v - 1.0).collect();
                let skip_sigma: Vec<f32> = k
                    .c_skip
                    .iter()
                    .zip(sigma)
                    .map(|(a, s)| (f64::from(*a) * s) as f32)
                    .collect();
                y.clone() * col(skip1) + nz * col(skip_sigma) + f * col(k.c_out.clone())
            }
            None => out.d - y.clone(),
        };
        let mut weights = Vec::with_capacity(n);
        for &s in sigma {
            let wgt = self.schedule.loss_weight(s)?;
            if !wgt.is_finite() {
                bail!(
                    "{}: loss weight at σ = {s} is not finite",
                    self.schedule.label()
                );
            }
            weights.push(wgt as f32);
        }
        let wt = Tensor::<1>::from_data(TensorData::new(weights, [n]), &dev);
        let mse = err
            .clone()
            .powi_scalar(2)
            .mean_dims(&[1, 2, 3])
            .reshape([n])
            * wt;
        let vb = crate::diffusion::vlb::vb_terms(chain, &ts, y, err.detach(), v);
        Ok((mse, vb))
    }

    /// improved-diffusion's per-example `mse` and `vb` (bits per dimension) in inference mode,
    /// without gradients; [`Model::hybrid_loss_and_grads`] trains on the same values.
    pub fn hybrid_terms(
        &self,
        params: &mut ParamStore,
        chain: &Chain,
        y: Vec<f32>,
        noise: Vec<f32>,
        sigma: &[f64],
        labels: Option<&[i64]>,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let mut graph = Executor::new(&self.device, Mode::Eval, params, 0);
        let (mse, vb) = self.hybrid_terms_on(&mut graph, chain, y, noise, sigma, labels)?;
        Ok((values(mse)?, values(vb)?))
    }

    /// One evaluation of improved-diffusion's hybrid objective with gradients:
    /// `mean_i [mse_i + vlb_scale·vb_i]`, where `vlb_scale` = λ·T makes `vb_i` (one
    /// uniformly drawn timestep's term) an estimate of λ·L_vlb (L_vlb = Σ_t L_t). With
    /// λ = 0.001 this is `LossType.RESCALED_MSE` (vb × T/1000). The VLB term's gradient reaches
    /// only the variance channels. Returns the loss and each parameter's gradient.
    pub fn hybrid_loss_and_grads(
        &self,
        params: &mut ParamStore,
        hybrid: &Hybrid,
        batch: TrainBatch<'_>,
    ) -> Result<(f64, IndexMap<String, DispatchTensor>)> {
        let TrainBatch {
            y,
            noise,
            sigma,
            labels,
            dropout_seed,
        } = batch;
        let n = sigma.len();
        let mut graph = Executor::new(&self.device, Mode::Train, params, dropout_seed);
        let (mse, vb) = self.hybrid_terms_on(&mut graph, &hybrid.chain, y, noise, sigma, labels)?;
        let loss = (mse + vb.mul_scalar(hybrid.vlb_scale))
            .sum()
            .div_scalar(n as f64);
        let value = values(loss.clone())?[0];
        let slot = HostTensor {
            t: loss.into_dispatch(),
            shape: vec![1],
            int: false,
        };
        let grads = engine::gradients(&graph, &slot)?;
        Ok((value, grads))
    }

    /// "architecture … under schedule …".
    pub fn label(&self) -> String {
        format!("{} under {}", self.arch.label(), self.schedule.label())
    }
}
