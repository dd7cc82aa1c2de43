//! Adapters from the plain component traits to the FFI traits.
//!
//! Every call is wrapped in `catch_unwind`: a panic inside plugin code becomes an error
//! ``"<kind> `<name>` panicked: <message>"`` instead of unwinding across the FFI boundary
//! (which would abort the host).

use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::std_types::{RErr, ROk, ROption, RResult, RSlice, RSliceMut, RString, RVec};

use crate::component::{
    Architecture, Conditioning, Criterion, Dataset, Inputs, Judging, NoiseSchedule, PResult,
};
use crate::ffi::*;
use crate::tensor::Ctx;

/// Extracts a readable message from a panic payload.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs `f`, turning an `Err` or a panic into an `RErr` whose message names `who`.
pub fn guard<R>(who: &str, f: impl FnOnce() -> PResult<R>) -> RResult<R, RString> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(e.into()),
        Err(p) => RErr(format!("{who} panicked: {}", panic_message(&*p)).into()),
    }
}

pub(crate) struct DatasetAdapter<T> {
    pub who: String,
    pub inner: T,
}

impl<T: Dataset> FfiDataset for DatasetAdapter<T> {
    fn info(&self) -> RResult<DatasetInfo, RString> {
        guard(&self.who, || {
            let s = self.inner.shape()?;
            Ok(DatasetInfo {
                channels: s.channels,
                height: s.height,
                width: s.width,
                len: s.len,
                class_names: s.class_names.into_iter().map(RString::from).collect(),
            })
        })
    }
    fn fill(
        &self,
        indices: RSlice<'_, u64>,
        mut images: RSliceMut<'_, f32>,
        mut labels: RSliceMut<'_, i64>,
    ) -> RResult<(), RString> {
        guard(&self.who, || {
            self.inner.fill(&indices, &mut images, &mut labels)
        })
    }
    fn has_validity(&self) -> bool {
        catch_unwind(AssertUnwindSafe(|| {
            self.inner.validity(&[], &mut []).is_some()
        }))
        .unwrap_or(false)
    }
    fn validity(
        &self,
        images: RSlice<'_, f32>,
        mut scores: RSliceMut<'_, f32>,
    ) -> RResult<(), RString> {
        guard(&self.who, || {
            match self.inner.validity(&images, &mut scores) {
                Some(r) => r,
                None => Err("this dataset has no validity score".into()),
            }
        })
    }
}

pub(crate) struct ScheduleAdapter<T> {
    pub who: String,
    pub inner: T,
}

impl<T: NoiseSchedule> FfiSchedule for ScheduleAdapter<T> {
    fn training_sigmas(
        &self,
        uniform: RSlice<'_, f64>,
        normal: RSlice<'_, f64>,
        mut out: RSliceMut<'_, f64>,
    ) -> RResult<(), RString> {
        guard(&self.who, || {
            self.inner.training_sigmas(&uniform, &normal, &mut out)
        })
    }
    fn precond(&self, sigma: f64) -> RResult<Precond, RString> {
        guard(&self.who, || Ok(self.inner.precond(sigma)))
    }
    fn loss_weight(&self, sigma: f64) -> RResult<f64, RString> {
        guard(&self.who, || Ok(self.inner.loss_weight(sigma)))
    }
    fn sampling_sigmas(&self, steps: usize) -> RResult<RVec<f64>, RString> {
        guard(&self.who, || {
            self.inner.sampling_sigmas(steps).map(RVec::from)
        })
    }
    fn round_sigma(&self, sigma: f64) -> RResult<f64, RString> {
        guard(&self.who, || Ok(self.inner.round_sigma(sigma)))
    }
}

pub(crate) struct ConditioningAdapter<T> {
    pub who: String,
    pub inner: T,
}

impl<T: Conditioning> FfiConditioning for ConditioningAdapter<T> {
    fn classes(&self, data: DataSummary) -> RResult<u32, RString> {
        guard(&self.who, || Ok(self.inner.classes(data)))
    }
    fn train_labels(
        &self,
        data: DataSummary,
        dataset_labels: RSlice<'_, i64>,
        ids: RSlice<'_, u64>,
        mut out: RSliceMut<'_, i64>,
    ) -> RResult<(), RString> {
        guard(&self.who, || {
            self.inner
                .train_labels(data, &dataset_labels, &ids, &mut out)
        })
    }
    fn sample_labels(
        &self,
        data: DataSummary,
        seed: u64,
        mut out: RSliceMut<'_, i64>,
    ) -> RResult<(), RString> {
        guard(&self.who, || self.inner.sample_labels(data, seed, &mut out))
    }
}

pub(crate) struct ArchitectureAdapter<T> {
    pub who: String,
    pub inner: T,
}

impl<T: Architecture> FfiArchitecture for ArchitectureAdapter<T> {
    fn info(&self) -> RResult<ArchInfo, RString> {
        guard(&self.who, || Ok(self.inner.info()))
    }
    fn forward(&self, ops: HostOpsDyn<'_>, args: ForwardArgs) -> RResult<TensorId, RString> {
        guard(&self.who, || {
            let ctx = Ctx::new(&ops);
            let inputs = Inputs {
                x: ctx.wrap(ops.retain(args.x)),
                noise: ctx.wrap(ops.retain(args.noise)),
                labels: args.labels.into_option().map(|l| ctx.wrap(ops.retain(l))),
                classes: args.classes,
            };
            let out = self.inner.forward(&ctx, inputs)?;
            Ok(out.into_id())
        })
    }
}

pub(crate) struct CriterionAdapter<T> {
    pub who: String,
    pub inner: T,
}

impl<T: Criterion> FfiCriterion for CriterionAdapter<T> {
    fn info(&self) -> RResult<CriterionInfo, RString> {
        guard(&self.who, || {
            Ok(crate::component::criterion_info(&self.inner))
        })
    }
    fn judge(
        &self,
        distances: RSlice<'_, f32>,
        neighbours: usize,
        mut flags: RSliceMut<'_, bool>,
        mut scores: RSliceMut<'_, f32>,
    ) -> RResult<(), RString> {
        guard(&self.who, || {
            let k = self.inner.neighbours();
            if neighbours != k || distances.len() != flags.len() * k || scores.len() != flags.len()
            {
                return Err(format!(
                    "judge called with {} distances, {neighbours} neighbours, {} flags, {} scores; \
                     expected {k} neighbours per sample",
                    distances.len(),
                    flags.len(),
                    scores.len()
                ));
            }
            self.inner.judge(&distances, &mut flags, &mut scores)
        })
    }
}

pub(crate) struct CriterionExtAdapter<T> {
    pub who: String,
    pub inner: T,
}

impl<T: Criterion> FfiCriterionExt for CriterionExtAdapter<T> {
    fn needs(&self) -> RResult<CriterionNeeds, RString> {
        guard(&self.who, || {
            Ok(crate::component::criterion_needs(&self.inner))
        })
    }
    fn embed(&self, ops: HostOpsDyn<'_>, x: TensorId) -> RResult<TensorId, RString> {
        guard(&self.who, || {
            let ctx = Ctx::new(&ops);
            let x = ctx.wrap(ops.retain(x));
            let out = self.inner.embed(&ctx, &x)?;
            Ok(out.into_id())
        })
    }
    fn embedding_weights(&self) -> RResult<ROption<RString>, RString> {
        guard(&self.who, || {
            Ok(self.inner.embedding_weights().map(RString::from).into())
        })
    }
    fn judge_with(
        &self,
        args: JudgeArgs<'_>,
        mut flags: RSliceMut<'_, bool>,
        mut scores: RSliceMut<'_, f32>,
    ) -> RResult<(), RString> {
        guard(&self.who, || {
            let k = args.neighbours;
            let m = flags.len();
            let d: usize = args.shape.iter().product();
            let images = self.inner.needs().contains(Needs::IMAGES);
            let (want_s, want_n) = if images { (m * d, m * k * d) } else { (0, 0) };
            if k == 0
                || args.distances.len() != m * k
                || args.ids.len() != m * k
                || scores.len() != m
                || args.samples.len() != want_s
                || args.neighbour_images.len() != want_n
            {
                return Err(format!(
                    "judge_with called with {} distances, {} ids, {k} neighbours, {} sample \
                     values, {} neighbour values, shape {:?}, for {m} flags and {} scores",
                    args.distances.len(),
                    args.ids.len(),
                    args.samples.len(),
                    args.neighbour_images.len(),
                    args.shape,
                    scores.len()
                ));
            }
            let judging = Judging {
                distances: &args.distances,
                neighbours: k,
                ids: &args.ids,
                shape: args.shape,
                samples: &args.samples,
                neighbour_images: &args.neighbour_images,
            };
            self.inner.judge_with(&judging, &mut flags, &mut scores)
        })
    }
}
