//! The host engine through the ABI: gradients against finite differences, training and
//! inference forward passes of a real plugin, and failures inside plugins.

use memlab::engine::executor::{Executor, Mode};
use memlab::engine::params::{ParamStore, read_f32};
use memlab::engine::{self, cpu};
use memlab::plugins::Registry;
use memlab_e2e::fixture_dir;
use memlab_plugin_api::ffi::{ForwardArgs, HostOps};
use memlab_plugin_api::nn::{Conv2d, GroupNorm, LayerNorm, Linear, SpatialAttention};
use memlab_plugin_api::{Ctx, SplitMix64};

fn registry() -> Registry {
    Registry::load(&[fixture_dir()]).expect("registry")
}

/// A small network touching most ops of the tensor API; returns the scalar loss id.
fn loss_of(ctx: &Ctx<'_>) -> memlab_plugin_api::ffi::TensorId {
    let mut g = SplitMix64(42);
    let xs: Vec<f32> = (0..2 * 4 * 4 * 4).map(|_| g.normal() as f32).collect();
    let x = ctx.constant(&xs, &[2, 4, 4, 4]);
    let labels = ctx.constant_int(&[2, 0], &[2]);
    let h = Conv2d::new(4, 8, 3).same().forward(&ctx.scope("conv"), &x);
    let h = GroupNorm::new(4, 8).forward(&ctx.scope("gn"), &h).silu();
    let table = ctx.param("emb", &[3, 8], memlab_plugin_api::Init::normal(0.0, 1.0));
    let e = table.embedding(&labels).reshape_to(&[2, 8, 1, 1]);
    let h = h + e;
    let h = SpatialAttention::new(8, 2).forward(&ctx.scope("attn"), &h);
    let u = h.avg_pool2d(2, 2).upsample_nearest2d(2);
    let h = ctx.concat(&[&h, &u], 1);
    let f = h.flatten_from(1);
    let f = LayerNorm::new(256).forward(&ctx.scope("ln"), &f);
    let f = Linear::new(256, 5).forward(&ctx.scope("fc"), &f).tanh();
    let s = (f.square() + 1.0).sqrt().log() + f.sigmoid() * f.gelu() - f.var_dim(1, true) / 3.0;
    let w = ctx.constant(&[1.0, -0.5, 2.0, 0.25, 1.5], &[5]);
    let loss = (s * w).mean();
    loss.into_id()
}

fn eval_loss(store: &mut ParamStore) -> f64 {
    let graph = Executor::new(&cpu(), Mode::Eval, store, 0);
    let ops = graph.ops();
    let ctx = Ctx::new(&ops);
    let id = loss_of(&ctx);
    let slot = graph.finish(id).expect("loss");
    read_f32(&slot.t, slot.shape.len()).unwrap()[0] as f64
}

#[test]
fn gradients_match_finite_differences() {
    let device = cpu();
    let mut store = ParamStore::new(3);
    eval_loss(&mut store); // creates the parameters
    // Re-draw every parameter (zero-initialised layers would make many gradients trivially 0).
    let mut g = SplitMix64(7);
    let names: Vec<String> = store.iter().map(|(n, _)| n.clone()).collect();
    for n in &names {
        let len = store.read(n).unwrap().len();
        let v: Vec<f32> = (0..len).map(|_| (0.5 * g.normal()) as f32).collect();
        store.write(n, v, &device).unwrap();
    }
    store.freeze();

    let grads = {
        let graph = Executor::new(&device, Mode::Train, &mut store, 0);
        let ops = graph.ops();
        let ctx = Ctx::new(&ops);
        let id = loss_of(&ctx);
        let loss = graph.finish(id).unwrap();
        let grads = engine::gradients(&graph, &loss).unwrap();
        grads
            .into_iter()
            .map(|(n, t)| {
                let r = store_rank(&names, &n);
                (n, read_f32(&t, r).unwrap())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(grads.len(), names.len(), "every parameter gets a gradient");

    // Central differences in f32 at two step sizes: 3e-3 balances truncation (O(eps²)) against
    // rounding (O(1e-7/eps)) where the loss is smooth; where it curves sharply (GroupNorm's scale
    // at some points) the quotient at 3e-3 is off while 1e-3 agrees. The closer of the two must
    // match: a wrong gradient matches at neither.
    let mut checked = 0;
    for (name, grad) in &grads {
        let base = store.read(name).unwrap();
        let step = (base.len() / 6).max(1);
        for j in (0..base.len()).step_by(step) {
            let ad = grad[j] as f64;
            let mut fd_best = f64::NAN;
            for eps in [3e-3f32, 1e-3] {
                let mut v = base.clone();
                v[j] = base[j] + eps;
                store.write(name, v.clone(), &device).unwrap();
                let up = eval_loss(&mut store);
                v[j] = base[j] - eps;
                store.write(name, v, &device).unwrap();
                let down = eval_loss(&mut store);
                store.write(name, base.clone(), &device).unwrap();
                let fd = (up - down) / (2.0 * eps as f64);
                if fd_best.is_nan() || (fd - ad).abs() < (fd_best - ad).abs() {
                    fd_best = fd;
                }
            }
            let fd = fd_best;
            assert!(
                (fd - ad).abs() <= 2e-3 + 3e-2 * fd.abs().max(ad.abs()),
                "{name}[{j}]: autodiff {ad} vs finite difference {fd}"
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "checked {checked} coordinates");
}

fn store_rank(_names: &[String], name: &str) -> usize {
    // Gradients have the parameter's shape; ranks follow the layer conventions.
    match name {
        n if n.ends_with("conv.weight") => 4,
        // Attention's 1×1 projections are stored in PyTorch's Conv1d layout [out, in, 1].
        n if n.contains("qkv.weight") || n.contains("proj_out.weight") => 3,
        "emb" | "fc.weight" => 2,
        _ => 1,
    }
}

#[test]
fn architecture_plugin_runs_under_training_and_inference() {
    let reg = registry();
    let arch = reg
        .architecture("convnet", "channels = 8\nblocks = 1", 0)
        .unwrap();
    let device = cpu();
    let mut store = ParamStore::new(1);
    let mut g = SplitMix64(3);
    let x: Vec<f32> = (0..2 * 3 * 8 * 8).map(|_| g.normal() as f32).collect();

    let run = |store: &mut ParamStore, mode: Mode| {
        let graph = Executor::new(&device, mode, store, 0);
        let xi = graph.insert_data(x.clone(), &[2, 3, 8, 8]).unwrap();
        let ni = graph.insert_data(vec![0.1, -0.7], &[2]).unwrap();
        let args = ForwardArgs {
            x: xi,
            noise: ni,
            labels: abi_stable::std_types::RNone,
            classes: 0,
        };
        let out = engine::forward(&arch, &graph, args).unwrap();
        graph.release(xi);
        graph.release(ni);
        assert_eq!(
            graph.live_tensors(),
            0,
            "plugin released every tensor it made"
        );
        let grads = if mode == Mode::Train {
            let loss_id = {
                let ops = graph.ops();
                let ctx = Ctx::new(&ops);
                let o = ctx.wrap(graph.insert(out.clone()));
                (o.square() + 0.5).mean().into_id()
            };
            let loss = graph.finish(loss_id).unwrap();
            engine::gradients(&graph, &loss).unwrap().len()
        } else {
            0
        };
        (out.shape.clone(), read_f32(&out.t, 4).unwrap(), grads)
    };
    let (shape_t, out_t, n_grads) = run(&mut store, Mode::Train);
    let n_params = store.len();
    let (shape_e, out_e, _) = run(&mut store, Mode::Eval);
    assert_eq!(shape_t, vec![2, 3, 8, 8]);
    assert_eq!(shape_t, shape_e);
    assert_eq!(n_grads, n_params, "gradients reach every parameter");
    for (a, b) in out_t.iter().zip(&out_e) {
        assert!((a - b).abs() < 1e-5, "train {a} vs eval {b}");
    }
}

#[test]
fn panics_in_plugins_become_errors_naming_the_plugin() {
    let reg = registry();

    // In the constructor.
    let e = reg
        .architecture("external-panicky", "panic_in = \"new\"", 0)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("external-plugin")
            && e.contains("panicked")
            && e.contains("deliberate panic in constructor"),
        "{e}"
    );

    // In forward.
    let arch = reg
        .architecture("external-panicky", "panic_in = \"forward\"", 0)
        .unwrap();
    let mut store = ParamStore::new(0);
    let graph = Executor::new(&cpu(), Mode::Eval, &mut store, 0);
    let x = graph.insert_data(vec![0.0; 16], &[1, 1, 4, 4]).unwrap();
    let n = graph.insert_data(vec![1.0], &[1]).unwrap();
    let args = ForwardArgs {
        x,
        noise: n,
        labels: abi_stable::std_types::RNone,
        classes: 0,
    };
    let e = engine::forward(&arch, &graph, args)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("external-panicky")
            && e.contains("external-plugin")
            && e.contains("deliberate panic in forward"),
        "{e}"
    );

    // In a dataset method.
    let mut ds = reg
        .dataset("external-checker", "resolution = 4", 0)
        .unwrap();
    assert!(ds.fill(&[1, 2]).is_ok());
    let e = ds.fill(&[12, 13]).err().unwrap().to_string();
    assert!(
        e.contains("external-checker") && e.contains("unlucky index 13"),
        "{e}"
    );

    // A bad op inside the host is reported with the op and the shapes, not a crash.
    let arch = reg
        .architecture("external-panicky", "panic_in = \"shape\"", 0)
        .unwrap();
    let mut store = ParamStore::new(0);
    let graph = Executor::new(&cpu(), Mode::Eval, &mut store, 0);
    let x = graph.insert_data(vec![0.0; 32], &[1, 2, 4, 4]).unwrap();
    let n = graph.insert_data(vec![1.0], &[1]).unwrap();
    let args = ForwardArgs {
        x,
        noise: n,
        labels: abi_stable::std_types::RNone,
        classes: 0,
    };
    let e = engine::forward(&arch, &graph, args)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("conv2d") && e.contains("[1, 2, 4, 4]") && e.contains("channels"),
        "{e}"
    );

    // And the process is still here to say so; a fresh call works.
    let ok = reg.architecture("external-panicky", "", 0).unwrap();
    let mut store = ParamStore::new(0);
    let graph = Executor::new(&cpu(), Mode::Eval, &mut store, 0);
    let x = graph.insert_data(vec![0.5; 16], &[1, 1, 4, 4]).unwrap();
    let n = graph.insert_data(vec![1.0], &[1]).unwrap();
    let args = ForwardArgs {
        x,
        noise: n,
        labels: abi_stable::std_types::RNone,
        classes: 0,
    };
    assert!(engine::forward(&ok, &graph, args).is_ok());
}

/// Runs `f` as one forward pass over `store` and returns the pass's error, if any.
fn pass(store: &mut ParamStore, mode: Mode, f: impl FnOnce(&Ctx<'_>)) -> Option<String> {
    let graph = Executor::new(&cpu(), mode, store, 0);
    let ops = graph.ops();
    let ctx = Ctx::new(&ops);
    f(&ctx);
    graph.error()
}

#[test]
fn a_parameter_requested_twice_in_one_pass_is_an_error_unless_shared() {
    use memlab_plugin_api::Init;
    for mode in [Mode::Eval, Mode::Train] {
        // Two layers given the same scope by mistake.
        let mut store = ParamStore::new(1);
        let e = pass(&mut store, mode, |ctx| {
            let x = ctx.full(&[2, 4], 1.0);
            let y = Linear::new(4, 4).forward(&ctx.scope("fc"), &x);
            let _ = Linear::new(4, 4).forward(&ctx.scope("fc"), &y);
        })
        .expect("an error");
        assert!(
            e.contains("parameter `fc.weight` is requested a second time in one forward pass")
                && e.contains("shared_param"),
            "{e}"
        );

        // Declared sharing: a `shared()` scope (layers included) or `shared_param`.
        let mut store = ParamStore::new(1);
        let e = pass(&mut store, mode, |ctx| {
            let x = ctx.full(&[2, 4], 1.0);
            let shared = ctx.scope("fc").shared();
            let y = Linear::new(4, 4).forward(&shared, &x);
            let _ = Linear::new(4, 4).forward(&shared, &y);
            let a = ctx.param("g", &[4], Init::ONES);
            let b = ctx.shared_param("g", &[4], Init::ONES);
            let _ = a + b;
        });
        assert_eq!(e, None);
        assert_eq!(store.len(), 3, "fc.weight, fc.bias and g, once each");
        // The next pass fetches the same names again: that is not reuse.
        let e = pass(&mut store, mode, |ctx| {
            let _ = ctx.param("g", &[4], Init::ONES);
        });
        assert_eq!(e, None);
    }
}

#[test]
fn buffers_are_stored_and_loaded_but_never_trained() {
    use memlab::diffusion::optim::{AdamConfig, AdamState, adam_step, ema_update};
    use memlab_plugin_api::Init;
    let device = cpu();
    let mut store = ParamStore::new(1);
    // A training pass: loss = Σ (w ⊙ b), so b would get a gradient were it a leaf.
    let (loss, grads) = {
        let graph = Executor::new(&device, Mode::Train, &mut store, 0);
        let ops = graph.ops();
        let ctx = Ctx::new(&ops);
        let w = ctx.param("w", &[3], Init::ONES);
        let b = ctx.scope("emb").buffer("freqs", &[1.0, 2.0, 3.0], &[3]);
        let id = (w * b).sum().into_id();
        let slot = graph.finish(id).unwrap();
        let grads = engine::gradients(&graph, &slot).unwrap();
        (read_f32(&slot.t, 1).unwrap()[0], grads)
    };
    assert_eq!(loss, 6.0);
    assert!(grads.contains_key("w"));
    assert!(!grads.contains_key("emb.freqs"), "a buffer is not a leaf");
    assert!(store.is_buffer("emb.freqs") && !store.is_buffer("w"));
    assert_eq!(store.num_scalars(), 3, "buffers are not parameters");
    let cfg = AdamConfig {
        lr: 0.1,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.5,
        coupled: false,
    };
    adam_step(&mut store, &mut AdamState::default(), &grads, &cfg, 0.1).unwrap();
    assert_eq!(store.read("emb.freqs").unwrap(), vec![1.0, 2.0, 3.0]);
    assert_ne!(store.read("w").unwrap(), vec![1.0, 1.0, 1.0]);
    let mut ema = ParamStore::new(1);
    ema_update(&mut ema, &store, 0.9).unwrap();
    store
        .write("emb.freqs", vec![7.0, 8.0, 9.0], &device)
        .unwrap();
    ema_update(&mut ema, &store, 0.9).unwrap();
    assert_eq!(
        ema.read("emb.freqs").unwrap(),
        vec![7.0, 8.0, 9.0],
        "copied"
    );
    assert!(ema.is_buffer("emb.freqs"));
    // A stored (e.g. loaded) value wins over the plugin's initial data.
    let e = pass(&mut store, Mode::Eval, |ctx| {
        let b = ctx.scope("emb").buffer("freqs", &[1.0, 2.0, 3.0], &[3]);
        assert_eq!(b.to_vec(), vec![7.0, 8.0, 9.0]);
        // Twice in one pass, or as a parameter: errors.
        let _ = ctx.scope("emb").buffer("freqs", &[1.0, 2.0, 3.0], &[3]);
    })
    .expect("an error");
    assert!(
        e.contains("buffer `emb.freqs` is requested a second time"),
        "{e}"
    );
    let e = pass(&mut store, Mode::Eval, |ctx| {
        let _ = ctx.param("emb.freqs", &[3], Init::ONES);
    })
    .expect("an error");
    assert!(e.contains("`emb.freqs` is a buffer"), "{e}");
}

/// The host's executor and the shape-only host (`testing::ShapeOps`) accept and refuse the same
/// ops with the same output shapes: both check every op with `memlab_plugin_api::shape`'s rules.
/// Each case builds its inputs and one op through the ABI on both hosts.
#[test]
fn executor_and_shape_only_host_agree_on_every_op() {
    use memlab_plugin_api::Conv2dOptions;
    use memlab_plugin_api::ffi::{BinaryOp, HostOpsDyn, ReduceOp, TensorId, UnaryOp};
    use memlab_plugin_api::testing::ShapeOps;

    type Case = (&'static str, fn(&HostOpsDyn<'_>) -> TensorId);
    fn f(ops: &HostOpsDyn<'_>, shape: &[usize]) -> TensorId {
        let n = shape.iter().product::<usize>();
        ops.constant(vec![0.5f32; n].as_slice().into(), shape.into())
    }
    fn i(ops: &HostOpsDyn<'_>, v: &[i64]) -> TensorId {
        ops.constant_int(v.into(), [v.len()].as_slice().into())
    }
    let cases: Vec<Case> = vec![
        ("unary", |o| o.unary(UnaryOp::Exp, f(o, &[2, 3]))),
        ("unary on ints", |o| o.unary(UnaryOp::Exp, i(o, &[1, 2]))),
        ("binary broadcast", |o| {
            o.binary(BinaryOp::Add, f(o, &[2, 1, 4]), f(o, &[3, 1]))
        }),
        ("binary mismatch", |o| {
            o.binary(BinaryOp::Mul, f(o, &[2, 3]), f(o, &[4]))
        }),
        ("reshape -1", |o| {
            o.reshape(f(o, &[2, 3, 4]), [6i64, -1].as_slice().into())
        }),
        ("reshape bad", |o| {
            o.reshape(f(o, &[2, 3]), [4i64].as_slice().into())
        }),
        ("permute", |o| {
            o.permute(f(o, &[2, 3, 4]), [2usize, 0, 1].as_slice().into())
        }),
        ("permute bad", |o| {
            o.permute(f(o, &[2, 3]), [0usize, 0].as_slice().into())
        }),
        ("permute ints", |o| {
            o.permute(i(o, &[1, 2]), [0usize].as_slice().into())
        }),
        ("concat", |o| {
            o.concat([f(o, &[2, 3]), f(o, &[2, 5])].as_slice().into(), 1)
        }),
        ("concat bad", |o| {
            o.concat([f(o, &[2, 3]), f(o, &[3, 3])].as_slice().into(), 1)
        }),
        ("slice", |o| o.slice(f(o, &[4, 6]), 1, 2, 5)),
        ("slice bad", |o| o.slice(f(o, &[4, 6]), 1, 5, 7)),
        ("reduce", |o| {
            o.reduce(ReduceOp::Mean, f(o, &[2, 3, 4]), 1, false)
        }),
        ("reduce keepdim", |o| {
            o.reduce(ReduceOp::Sum, f(o, &[2, 3]), 1, true)
        }),
        ("reduce bad dim", |o| {
            o.reduce(ReduceOp::Sum, f(o, &[2, 3]), 2, true)
        }),
        ("matmul batched", |o| {
            o.matmul(f(o, &[5, 2, 3]), f(o, &[3, 4]))
        }),
        ("matmul bad", |o| o.matmul(f(o, &[2, 3]), f(o, &[4, 2]))),
        ("softmax", |o| o.softmax(f(o, &[2, 3]), 1)),
        ("linear", |o| {
            o.linear(f(o, &[2, 3]), f(o, &[3, 4]), Some(f(o, &[4])).into())
        }),
        ("linear bad bias", |o| {
            o.linear(f(o, &[2, 3]), f(o, &[3, 4]), Some(f(o, &[3])).into())
        }),
        ("conv2d", |o| {
            let c = Conv2dOptions {
                stride: [2; 2],
                padding: [1; 2],
                dilation: [1; 2],
                groups: 1,
            };
            o.conv2d(
                f(o, &[1, 2, 7, 7]),
                f(o, &[4, 2, 3, 3]),
                Some(f(o, &[4])).into(),
                c,
            )
        }),
        ("conv2d bad bias", |o| {
            let c = Conv2dOptions {
                stride: [1; 2],
                padding: [0; 2],
                dilation: [1; 2],
                groups: 1,
            };
            o.conv2d(
                f(o, &[1, 2, 5, 5]),
                f(o, &[4, 2, 3, 3]),
                Some(f(o, &[2])).into(),
                c,
            )
        }),
        ("conv2d kernel too large", |o| {
            let c = Conv2dOptions {
                stride: [1; 2],
                padding: [0; 2],
                dilation: [1; 2],
                groups: 1,
            };
            o.conv2d(f(o, &[1, 2, 2, 2]), f(o, &[4, 2, 3, 3]), None.into(), c)
        }),
        ("group_norm", |o| {
            o.group_norm(
                f(o, &[2, 4, 3, 3]),
                2,
                Some(f(o, &[4])).into(),
                Some(f(o, &[4])).into(),
                1e-5,
            )
        }),
        ("group_norm bad groups", |o| {
            o.group_norm(f(o, &[2, 4, 3, 3]), 3, None.into(), None.into(), 1e-5)
        }),
        ("layer_norm bad affine", |o| {
            o.layer_norm(f(o, &[2, 4]), Some(f(o, &[3])).into(), None.into(), 1e-5)
        }),
        ("dropout bad p", |o| o.dropout(f(o, &[2, 3]), 1.5)),
        ("avg_pool2d", |o| o.avg_pool2d(f(o, &[1, 2, 8, 8]), 2, 2)),
        ("avg_pool2d too small", |o| {
            o.avg_pool2d(f(o, &[1, 2, 1, 1]), 2, 2)
        }),
        ("upsample", |o| o.upsample_nearest2d(f(o, &[1, 2, 3, 3]), 2)),
        ("embedding", |o| o.embedding(f(o, &[5, 3]), i(o, &[0, 4]))),
        ("embedding float ids", |o| {
            o.embedding(f(o, &[5, 3]), f(o, &[2]))
        }),
    ];
    let (mut accepted, mut refused) = (0, 0);
    for (name, case) in cases {
        let mut store = ParamStore::new(0);
        let exec = Executor::new(&cpu(), Mode::Eval, &mut store, 0);
        let host_ops = exec.ops();
        let id = case(&host_ops);
        let host = exec.finish(id).map(|t| t.shape).map_err(|e| e.to_string());
        let shape_only = ShapeOps::new();
        let sops = shape_only.ops();
        let sid = case(&sops);
        let shapes = match shape_only.error() {
            None => Ok(shape_only.shape(sid).expect("live output")),
            Some(e) => Err(e),
        };
        match (&host, &shapes) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "{name}: output shapes differ");
                accepted += 1;
            }
            (Err(a), Err(b)) => {
                // Same rule, same message (the host may add context around it).
                let core = b.split("]: ").last().unwrap_or(b);
                assert!(
                    a.contains(core),
                    "{name}: host says {a:?}, shape-only says {b:?}"
                );
                refused += 1;
            }
            _ => panic!("{name}: host {host:?} but shape-only host {shapes:?}"),
        }
    }
    assert_eq!(
        (accepted, refused),
        (16, 17),
        "every case ran on both hosts"
    );
}
