//! memlab's `unet` and `ddpmpp` plugins against the reference implementations themselves:
//! fixtures written by `tests/reference/make_network_fixtures.py` from improved-diffusion's
//! `UNetModel` and EDM's `SongUNet` (DDPM++, NCSN++ and the other encoder / decoder / embedding /
//! filter options) with `EDMPrecond` / `VPPrecond` / `VEPrecond`.
//!
//! Each fixture's weights are the reference `state_dict` (PyTorch names and layouts), loaded the
//! way `architecture.init_from` loads them; the raw network output F(x, noise, label) (every
//! output channel) and the preconditioned D(x; σ) must match within 1e-4 (max abs).

use std::path::{Path, PathBuf};

use abi_stable::std_types::{RNone, RSome};
use burn::tensor::{Tensor, TensorData};
use memlab::diffusion::model::Model;
use memlab::engine::executor::{Executor, Mode};
use memlab::engine::params::{ParamStore, read_f32};
use memlab::engine::{self, cpu};
use memlab::plugins::Registry;
use memlab_plugin_api::ffi::ForwardArgs;
use safetensors::{Dtype, SafeTensors};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/reference/networks/{name}"))
}

/// A fixture's inputs and outputs, with the network's config from the metadata.
struct Io {
    arch: String,
    params: String,
    bytes: Vec<u8>,
}

impl Io {
    fn load(name: &str) -> Io {
        let bytes = std::fs::read(fixture(&format!("{name}.io.safetensors"))).unwrap();
        let (_, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().unwrap();
        Io {
            arch: meta["architecture"].clone(),
            params: meta["memlab_params"].clone(),
            bytes,
        }
    }
    fn st(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    fn has(&self, name: &str) -> bool {
        self.st().names().contains(&name)
    }
    fn shape(&self, name: &str) -> Vec<usize> {
        self.st().tensor(name).unwrap().shape().to_vec()
    }
    fn f32(&self, name: &str) -> Vec<f32> {
        let st = self.st();
        let v = st.tensor(name).unwrap();
        assert_eq!(v.dtype(), Dtype::F32, "{name}");
        v.data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    }
    fn labels(&self) -> Option<Vec<i64>> {
        self.has("labels").then(|| {
            let st = self.st();
            let v = st.tensor("labels").unwrap();
            assert_eq!(v.dtype(), Dtype::I64);
            v.data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect()
        })
    }
}

/// The fixture's network under `schedule`, with the reference weights loaded by name.
fn model(name: &str, io: &Io, schedule: &str, classes: u32) -> (Model, ParamStore) {
    let reg = Registry::load(&[]).expect("registry");
    let arch = reg
        .architecture(&io.arch, &io.params, 0)
        .expect("the unet and ddpmpp plugins are built (cargo build --workspace)");
    let info = arch.info().unwrap();
    let x = io.shape("x");
    let model = Model {
        arch,
        schedule: reg.schedule(schedule, "", 0).unwrap(),
        info,
        device: cpu(),
        classes,
        image_shape: [x[1], x[2], x[3]],
        training_set: None,
        training_len: 0,
    };
    let mut params = ParamStore::new(0);
    memlab::diffusion::train::materialize(&model, &mut params).unwrap();
    let weights = fixture(&format!("{name}.weights.safetensors"));
    memlab::diffusion::weights::load_into(&mut params, &weights, &model.device).unwrap();
    (model, params)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn max_abs(a: &[f32]) -> f32 {
    a.iter().map(|x| x.abs()).fold(0.0, f32::max)
}

/// The architecture's raw output F(x, noise, label), all channels.
fn raw_forward(model: &Model, params: &mut ParamStore, io: &Io) -> Vec<f32> {
    forward_with(model, params, io, Mode::Eval, io.labels())
}

/// F in `mode` with the given labels.
fn forward_with(
    model: &Model,
    params: &mut ParamStore,
    io: &Io,
    mode: Mode,
    labels: Option<Vec<i64>>,
) -> Vec<f32> {
    let x = io.f32("x");
    let shape = io.shape("x");
    let n = shape[0];
    let graph = Executor::new(&model.device, mode, params, 0);
    let xi = graph.insert_data(x, &shape).unwrap();
    let ni = graph.insert_data(io.f32("noise"), &[n]).unwrap();
    let labels = match labels {
        Some(l) => RSome(graph.insert_int(l, &[n]).unwrap()),
        None => RNone,
    };
    let args = ForwardArgs {
        x: xi,
        noise: ni,
        labels,
        classes: model.classes,
    };
    let out = engine::forward(&model.arch, &graph, args).unwrap();
    assert_eq!(out.shape, io.shape("F"));
    read_f32(&out.t, 4).unwrap()
}

/// Checks F for fixture `name` and returns the max abs difference.
fn check_raw(name: &str, classes: u32) -> f32 {
    let io = Io::load(name);
    let (model, mut params) = model(name, &io, "edm", classes);
    let f = raw_forward(&model, &mut params, &io);
    let want = io.f32("F");
    let d = max_abs_diff(&f, &want);
    eprintln!(
        "{name}: F max |Δ| = {d:.2e} (max |F| = {:.2})",
        max_abs(&want)
    );
    assert!(max_abs(&want) > 0.1, "{name}: a non-trivial output");
    assert!(d <= TOL, "{name}: F differs from the reference by {d}");
    d
}

#[test]
fn unet_matches_improved_diffusion_plain() {
    check_raw("unet_plain", 0);
}

#[test]
fn unet_matches_improved_diffusion_scale_shift_attention_resampling() {
    check_raw("unet_ssn_attn", 0);
}

#[test]
fn unet_matches_improved_diffusion_classes_learned_sigma() {
    let io = Io::load("unet_class_sigma");
    assert_eq!(
        io.shape("F")[1],
        6,
        "learned sigma: 2·C outputs compared in full"
    );
    check_raw("unet_class_sigma", 5);
}

/// F and D(x; σ) under the `edm`, `vp` and `ve` schedules against EDMPrecond, VPPrecond and
/// VEPrecond wrapping the same SongUNet (for Fourier embeddings, VPPrecond's network gets the
/// float32 rounding of the exact c_noise, as memlab's: see the fixture script).
fn check_ddpmpp(name: &str, classes: u32) {
    check_raw(name, classes);
    let io = Io::load(name);
    let shape = io.shape("x");
    let sigma: Vec<f64> = io.f32("sigma").iter().map(|&s| s as f64).collect();
    for schedule in ["edm", "vp", "ve"] {
        if !io.has(&format!("D_{schedule}")) {
            continue;
        }
        let (model, mut params) = model(name, &io, schedule, classes);
        let x = Tensor::<4>::from_data(
            TensorData::new(io.f32("x"), [shape[0], shape[1], shape[2], shape[3]]),
            &model.device,
        );
        let labels = io.labels();
        let d = model
            .denoise(&mut params, x, &sigma, labels.as_deref())
            .unwrap();
        let d: Vec<f32> = d.into_data().convert::<f32>().try_to_vec().unwrap();
        let want = io.f32(&format!("D_{schedule}"));
        let diff = max_abs_diff(&d, &want);
        eprintln!(
            "{name}: D under {schedule} max |Δ| = {diff:.2e} (max |D| = {:.2})",
            max_abs(&want)
        );
        assert!(
            diff <= TOL,
            "{name}: D under {schedule} differs from the reference by {diff}"
        );
    }
}

#[test]
fn ddpmpp_matches_edm_songunet_and_preconditioners() {
    check_ddpmpp("ddpmpp", 0);
}

#[test]
fn ddpmpp_with_class_labels_matches_edm() {
    check_ddpmpp("ddpmpp_class", 4);
}

#[test]
fn songunet_skip_encoder_and_decoder_match_edm() {
    check_ddpmpp("songunet_skip", 0);
}

#[test]
fn songunet_residual_encoder_matches_edm() {
    check_ddpmpp("songunet_residual", 0);
}

#[test]
fn ncsnpp_matches_edm() {
    // Fourier embedding (the loaded `map_noise.freqs` buffer), channel_mult_noise 2, residual
    // encoder, [1, 3, 3, 1] filter (its `resample_filter` buffers loaded by name).
    let io = Io::load("ncsnpp");
    assert!(
        io.params.contains("resample_filter = [1, 3, 3, 1]"),
        "{}",
        io.params
    );
    check_ddpmpp("ncsnpp", 0);
}

#[test]
fn ncsnpp_skip_with_classes_and_augment_dim_matches_edm() {
    check_ddpmpp("ncsnpp_skip_class_aug", 3);
}

/// The loaded Fourier frequencies are the checkpoint's (not the seed's), and buffers are
/// neither parameters nor trained.
#[test]
fn checkpoint_buffers_are_loaded_and_not_trained() {
    let io = Io::load("ncsnpp");
    let (_model, params) = model("ncsnpp", &io, "edm", 0);
    assert!(params.is_buffer("map_noise.freqs"));
    assert!(params.is_buffer("enc.4x4_aux_residual.resample_filter"));
    assert!(!params.is_buffer("map_layer0.weight"));
    let st =
        SafeTensors::deserialize(&std::fs::read(fixture("ncsnpp.weights.safetensors")).unwrap())
            .unwrap()
            .tensor("map_noise.freqs")
            .unwrap()
            .data()
            .chunks_exact(2)
            .map(|c| f32::from_bits(u32::from(u16::from_le_bytes([c[0], c[1]])) << 16))
            .collect::<Vec<f32>>();
    assert_eq!(params.read("map_noise.freqs").unwrap(), st);
    let buffered: usize = params
        .iter()
        .filter(|(n, _)| params.is_buffer(n))
        .map(|(_, p)| p.shape.iter().product::<usize>())
        .sum();
    let all: usize = params
        .iter()
        .map(|(_, p)| p.shape.iter().product::<usize>())
        .sum();
    assert_eq!(params.num_scalars(), all - buffered);
    assert_eq!(
        params.num_scalars(),
        323_811,
        "the reference's parameter count"
    );
}

/// `label_dropout` acts in training passes only: with p = 0 a training pass (the fixture has no
/// block dropout) is the reference's eval output; with p close to 1 the labels are dropped,
/// so different labels give the same output; evaluation passes ignore it.
#[test]
fn label_dropout_drops_labels_in_training_passes_only() {
    let mut io = Io::load("ddpmpp_class");
    let base = io.params.clone();
    let want = io.f32("F");
    let other = Some(vec![1, 3]);
    for (p, dropped) in [("0", false), ("0.999999", true)] {
        io.params = format!("{base}\nlabel_dropout = {p}");
        let (model, mut params) = model("ddpmpp_class", &io, "edm", 4);
        let eval = forward_with(&model, &mut params, &io, Mode::Eval, io.labels());
        assert!(
            max_abs_diff(&eval, &want) <= TOL,
            "p = {p}: eval ignores label_dropout"
        );
        let a = forward_with(&model, &mut params, &io, Mode::Train, io.labels());
        let b = forward_with(&model, &mut params, &io, Mode::Train, other.clone());
        if dropped {
            assert!(max_abs_diff(&a, &b) <= 1e-6, "labels dropped");
            assert!(max_abs_diff(&a, &want) > 1e-3);
        } else {
            assert!(
                max_abs_diff(&a, &want) <= TOL,
                "p = 0: the reference output"
            );
            assert!(max_abs_diff(&a, &b) > 1e-3, "labels matter");
        }
    }
}

/// The production path: `architecture.init_from` in a run config starts from the reference
/// weights (with `steps = 0` the run samples from them directly), and a file that does not fit
/// the model fails the run naming the offending tensors.
#[test]
fn init_from_in_a_run_config() {
    let dir = tempfile::tempdir().unwrap();
    let io = Io::load("ddpmpp");
    let config = |name: &str, weights: &str| {
        let text = format!(
            r#"
[run]
name = "{name}"
device = "cpu"
[dataset]
name = "mondrian"
params = {{ resolution = 8, size = 8 }}
[architecture]
name = "ddpmpp"
params = {{ {} }}
init_from = "{}"
[schedule]
name = "edm"
[train]
steps = 0
batch_size = 4
[sample]
count = 4
steps = 3
"#,
            io.params.replace('\n', ", "),
            fixture(weights).display()
        );
        let p = dir.path().join(format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let ok = config("ref", "ddpmpp.weights.safetensors");
    let r = memlab_e2e::memlab(&["run", ok.to_str().unwrap()], None, Some(dir.path()));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("starting from the weights in"),
        "{}",
        r.stderr
    );
    let resolved = std::fs::read_to_string(dir.path().join("runs/ref/config.toml")).unwrap();
    assert!(resolved.contains("init_from = "), "{resolved}");

    let wrong = config("wrong", "ddpmpp_class.weights.safetensors");
    let r = memlab_e2e::memlab(&["run", wrong.to_str().unwrap()], None, Some(dir.path()));
    assert_ne!(r.code, 0);
    for needle in [
        "does not match the model's",
        "unexpected (not parameters of the model)",
        "`map_label.weight` [16, 4]",
        "mis-shaped",
        "`enc.4x4_block0.conv0.weight`: the file has [16, 16, 3, 3], the model needs [32, 16, 3, 3]",
    ] {
        assert!(
            r.stderr.contains(needle),
            "{needle:?} not in:\n{}",
            r.stderr
        );
    }
}
