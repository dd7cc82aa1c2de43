//! [`FastOps`] on `Autodiff<Flex, C>`: each op runs its Flex kernel forward and records a
//! node whose backward calls the matching gradient kernels. Inputs are kept in the node's
//! state (as burn's own compute-bound ops do); gradients are computed only for inputs that
//! require them.

use super::FlexTensor;
use burn::backend::Flex;
use burn::backend::autodiff::Autodiff;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::ops::ConvOptions;
use burn::backend::tensor::FloatTensor;

use super::{
    FastOps, act, conv, conv_forward, conv_shape, dims, f32s, flex, norm, norm_shape, pool, softmax,
};

#[derive(Debug)]
struct Conv<const N: usize>;

type ConvState = (FlexTensor, FlexTensor, ConvOptions<2>);

impl<const N: usize> Backward<Flex, N> for Conv<N> {
    type State = ConvState;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, w, o) = ops.state;
        let s = conv_shape(&x, &w, &o);
        let dy_s = f32s(&dy);
        if let Some(node) = &ops.parents[0] {
            let dx = conv::backward_input(&s, &f32s(&w), &dy_s);
            grads.register::<Flex>(node.id, flex(dx, dims(&x)));
        }
        if let Some(node) = &ops.parents[1] {
            let dw = conv::backward_weight(&s, &f32s(&x), &dy_s);
            grads.register::<Flex>(node.id, flex(dw, dims(&w)));
        }
        if N == 3
            && let Some(node) = &ops.parents[2]
        {
            let db = conv::backward_bias(&s, &dy_s);
            grads.register::<Flex>(node.id, flex(db, vec![s.c_out]));
        }
    }
}

#[derive(Debug)]
struct GroupNorm;

impl Backward<Flex, 3> for GroupNorm {
    /// Input, γ, β, groups, ε, and whether SiLU followed in the same op.
    type State = (FlexTensor, FlexTensor, FlexTensor, usize, f64, bool);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let dy = grads.consume::<Flex>(&ops.node);
        let (x, gamma, beta, groups, eps, silu) = ops.state;
        let s = norm_shape(&x, groups);
        let (x_, g, d) = (f32s(&x), f32s(&gamma), f32s(&dy));
        let (dx, dg, db) = if silu {
            norm::backward_silu(&s, &x_, &g, &f32s(&beta), &d, eps)
        } else {
            norm::backward(&s, &x_, &g, &d, eps)
        };
        let [px, pg, pb] = &ops.parents;
        if let Some(node) = px {
            grads.register::<Flex>(node.id, flex(dx, dims(&x)));
        }
        if let Some(node) = pg {
            grads.register::<Flex>(node.id, flex(dg, vec![s.c]));
        }
        if let Some(node) = pb {
            grads.register::<Flex>(node.id, flex(db, vec![s.c]));
        }
    }
}

#[derive(Debug)]
struct Silu;

impl Backward<Flex, 1> for Silu {
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| {
            flex(act::silu_backward(&f32s(&x), &f32s(&dy)), dims(&x))
        });
    }
}

#[derive(Debug)]
struct Softmax;

impl Backward<Flex, 1> for Softmax {
    /// The output `y` (the gradient needs only `y`).
    type State = FlexTensor;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let y = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| {
            let shape = dims(&y);
            let len = shape.last().copied().unwrap_or(1);
            flex(softmax::backward(&f32s(&y), &f32s(&dy), len), shape)
        });
    }
}

#[derive(Debug)]
struct AvgPool;

impl Backward<Flex, 1> for AvgPool {
    /// Input shape `[n, c, h, w]` and window `k`.
    type State = ([usize; 4], usize);

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let ([n, c, h, w], k) = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |dy| {
            flex(pool::backward(&f32s(&dy), n * c, h, w, k), vec![n, c, h, w])
        });
    }
}

impl<C: CheckpointStrategy> FastOps for Autodiff<Flex, C> {
    fn fast_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let out = conv_forward(
            x.primitive(),
            weight.primitive(),
            Some(bias.primitive()),
            &options,
        );
        let state = (x.primitive().clone(), weight.primitive().clone(), options);
        match Conv::<3>
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fast_conv2d_nobias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let out = conv_forward(x.primitive(), weight.primitive(), None, &options);
        let state = (x.primitive().clone(), weight.primitive().clone(), options);
        match Conv::<2>
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fast_group_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        groups: usize,
        eps: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        let (xp, gp, bp) = (
            x.primitive().clone(),
            gamma.primitive().clone(),
            beta.primitive().clone(),
        );
        let out = Flex::fast_group_norm(xp.clone(), gp.clone(), bp.clone(), groups, eps, silu);
        match GroupNorm
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish((xp, gp, bp, groups, eps, silu), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fast_adam(
        _p: FloatTensor<Self>,
        _g: FloatTensor<Self>,
        _m: FloatTensor<Self>,
        _v: FloatTensor<Self>,
        _hyper: [f64; 8],
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        // `kernels::adam` only routes tensors without autodiff here; parameters live on the
        // inner device.
        unreachable!("fast_adam is called on parameters of the inner (non-autodiff) device")
    }

    fn fast_avg_pool(x: FloatTensor<Self>, k: usize) -> FloatTensor<Self> {
        let d = dims(x.primitive());
        let out = Flex::fast_avg_pool(x.primitive().clone(), k);
        match AvgPool.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(([d[0], d[1], d[2], d[3]], k), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fast_softmax(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = Flex::fast_softmax(x.primitive().clone());
        match Softmax.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(out.clone(), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }

    fn fast_silu(x: FloatTensor<Self>) -> FloatTensor<Self> {
        let out = Flex::fast_silu(x.primitive().clone());
        match Silu.prepare::<C>([x.node()]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish(x.primitive().clone(), out),
            OpsKind::UnTracked(prep) => prep.finish(out),
        }
    }
}
