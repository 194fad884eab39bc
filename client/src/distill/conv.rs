//! The CNN student's convolutions and pooling on channels-last maps `[n, h, w, c]`, as plain
//! loops candle calls as custom operations (with their gradients).
//!
//! A same-padded convolution is an unfold (every `k x k` patch gathered into a row, zeros
//! where the patch leaves the image) followed by one matrix product with the weights. On 8x8
//! digits candle's CPU `conv2d`, `max_pool2d`, and the same unfold spelled in candle's own ops
//! (padding, `index_select`, multi-dimension `max`) spent almost all their time in generic
//! strided copies and reductions: inference over 359 records took 6.8 ms for a CNN with a
//! seventh of the MLP teacher's arithmetic, against the teacher's 1.6 ms.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

/// The contiguous `f32` values of a custom op's input, or an error naming the op.
pub(super) fn values<'a>(
    name: &str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("{name}: expects f32 values");
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("{name}: expects a contiguous input");
    };
    Ok(&data[start..end])
}

/// `[n, h, w, c]` of a custom op's input, or an error naming the op.
fn dims4(name: &str, layout: &Layout) -> candle_core::Result<(usize, usize, usize, usize)> {
    match *layout.dims() {
        [n, h, w, c] => Ok((n, h, w, c)),
        ref other => candle_core::bail!("{name}: expects [n, h, w, c] maps, got {other:?}"),
    }
}

/// A run length, fixed at compile time for the widths the students use so the per-pixel
/// copies compile to straight vector code instead of a `memcpy` call or a scalar loop each
/// (at 1 to 96 values a run those calls were most of the time), or known only at run time.
trait Width: Copy {
    fn get(self) -> usize;
}

#[derive(Clone, Copy)]
struct Fixed<const W: usize>;

impl<const W: usize> Width for Fixed<W> {
    #[inline(always)]
    fn get(self) -> usize {
        W
    }
}

#[derive(Clone, Copy)]
struct Dynamic(usize);

impl Width for Dynamic {
    #[inline(always)]
    fn get(self) -> usize {
        self.0
    }
}

/// Calls `$body` with `$w` bound to a [`Width`] for `$n`: a [`Fixed`] one for channel counts
/// 1, 8, 16, 32 and for 3x3-kernel patch rows of them (3, 24, 48, 96), [`Dynamic`] otherwise.
macro_rules! with_width {
    ($n:expr, |$w:ident| $body:expr) => {
        with_width!(@ $n, $w, $body, [1 3 8 16 24 32 48 96])
    };
    (@ $n:expr, $w:ident, $body:expr, [$($fixed:literal)*]) => {
        match $n {
            $($fixed => {
                let $w = Fixed::<$fixed>;
                $body
            })*
            n => {
                let $w = Dynamic(n);
                $body
            }
        }
    };
}

/// `[n, h, w, c]` maps with a border of `pad` zeros: `[n, h + 2 pad, w + 2 pad, c]`.
fn padded(x: &[f32], (n, h, w, c): (usize, usize, usize, usize), pad: usize) -> Vec<f32> {
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let mut out = vec![0f32; n * hp * wp * c];
    for (image, maps) in x.chunks_exact(h * w * c).enumerate() {
        for (y, row) in maps.chunks_exact(w * c).enumerate() {
            let at = ((image * hp + y + pad) * wp + pad) * c;
            out[at..at + w * c].copy_from_slice(row);
        }
    }
    out
}

/// Visits the rows of a same-padded `kernel x kernel` unfold of `[n, h, w, c]` maps in order,
/// one kernel row at a time: `f(from)` says the next `kernel * c` patch values are the padded
/// maps' values `from..` (see [`padded`]; kernel columns and channels are contiguous there).
#[inline(always)]
fn for_each_kernel_row(
    (n, h, w, c): (usize, usize, usize, usize),
    kernel: usize,
    mut f: impl FnMut(usize),
) {
    let pad = kernel / 2;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    for image in 0..n {
        for y in 0..h {
            for x in 0..w {
                for dy in 0..kernel {
                    f(((image * hp + y + dy) * wp + x) * c);
                }
            }
        }
    }
}

/// Gathers every `kernel x kernel` patch (zero-padded at the border) of `[n, h, w, c]` maps
/// into rows `[n * h * w, kernel * kernel * c]`, ordered kernel row, kernel column, channel.
#[derive(Debug, Clone, Copy)]
struct Unfold {
    kernel: usize,
}

/// [`Unfold`] with `run` = `kernel * c`: each kernel row of a patch is one contiguous run of
/// the zero-padded maps, so there are no border cases.
fn unfold(
    run: impl Width,
    x: &[f32],
    dims: (usize, usize, usize, usize),
    kernel: usize,
) -> Vec<f32> {
    let (n, h, w, _) = dims;
    let source = padded(x, dims, kernel / 2);
    let mut out = Vec::with_capacity(n * h * w * kernel * run.get());
    for_each_kernel_row(dims, kernel, |from| {
        out.extend_from_slice(&source[from..from + run.get()]);
    });
    out
}

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "unfold"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(self.name(), storage, layout)?;
        let dims @ (n, h, w, c) = dims4(self.name(), layout)?;
        let out = with_width!(self.kernel * c, |run| unfold(run, x, dims, self.kernel));
        let width = self.kernel * self.kernel * c;
        Ok((CpuStorage::F32(out), Shape::from((n * h * w, width))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let fold = Fold {
            kernel: self.kernel,
            dims: arg.dims4()?,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&fold)?))
    }
}

/// The adjoint of [`Unfold`]: sums patch rows back onto the maps they came from.
#[derive(Debug, Clone, Copy)]
struct Fold {
    kernel: usize,
    dims: (usize, usize, usize, usize),
}

/// [`Fold`] with `run` = `kernel * c`: sums into zero-padded maps, then drops the border.
fn fold(
    run: impl Width,
    patches: &[f32],
    dims: (usize, usize, usize, usize),
    kernel: usize,
) -> Vec<f32> {
    let (n, h, w, c) = dims;
    let pad = kernel / 2;
    let (hp, wp) = (h + 2 * pad, w + 2 * pad);
    let mut sums = vec![0f32; n * hp * wp * c];
    let mut rows = patches.chunks_exact(run.get());
    for_each_kernel_row(dims, kernel, |to| {
        if let Some(row) = rows.next() {
            for (s, p) in sums[to..to + run.get()].iter_mut().zip(row) {
                *s += p;
            }
        }
    });
    let mut out = Vec::with_capacity(n * h * w * c);
    for image in 0..n {
        for y in 0..h {
            let at = ((image * hp + y + pad) * wp + pad) * c;
            out.extend_from_slice(&sums[at..at + w * c]);
        }
    }
    out
}

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "fold"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let patches = values(self.name(), storage, layout)?;
        let (n, h, w, c) = self.dims;
        if patches.len() != n * h * w * self.kernel * self.kernel * c {
            candle_core::bail!(
                "fold: {} patch values for maps {:?}",
                patches.len(),
                self.dims
            );
        }
        let out = with_width!(self.kernel * c, |run| fold(
            run,
            patches,
            self.dims,
            self.kernel
        ));
        Ok((CpuStorage::F32(out), Shape::from((n, h, w, c))))
    }
}

/// 2x2 max-pooling of `[n, h, w, c]` maps (even `h` and `w`).
#[derive(Debug, Clone, Copy)]
struct MaxPool;

/// Visits each 2x2 window of `[n, h, w, c]` maps (even `h`, `w`) in output order:
/// `f(out, [a, b, c, d])` says pooled values `out..out + c` come from the input runs
/// starting at `a`, `b`, `c`, `d` (top left, top right, bottom left, bottom right).
#[inline(always)]
fn for_each_window(
    (n, h, w, c): (usize, usize, usize, usize),
    mut f: impl FnMut(usize, [usize; 4]),
) {
    let mut out = 0;
    for image in 0..n {
        for y in (0..h).step_by(2) {
            for x in (0..w).step_by(2) {
                let at = |yy: usize, xx: usize| ((image * h + yy) * w + xx) * c;
                f(
                    out,
                    [at(y, x), at(y, x + 1), at(y + 1, x), at(y + 1, x + 1)],
                );
                out += c;
            }
        }
    }
}

fn max_pool(ch: impl Width, x: &[f32], dims: (usize, usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0f32; x.len() / 4];
    for_each_window(dims, |o, [a, b, c, d]| {
        let k = ch.get();
        let (a, b, c, d) = (&x[a..a + k], &x[b..b + k], &x[c..c + k], &x[d..d + k]);
        for (i, o) in out[o..o + k].iter_mut().enumerate() {
            *o = a[i].max(b[i]).max(c[i]).max(d[i]);
        }
    });
    out
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool-2x2"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(self.name(), storage, layout)?;
        let dims @ (n, h, w, c) = dims4(self.name(), layout)?;
        if h % 2 != 0 || w % 2 != 0 {
            candle_core::bail!("max-pool-2x2: maps must have even sides, got {h}x{w}");
        }
        let out = with_width!(c, |ch| max_pool(ch, x, dims));
        Ok((CpuStorage::F32(out), Shape::from((n, h / 2, w / 2, c))))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            arg.apply_op2_no_bwd(&grad.contiguous()?, &MaxPoolGrad)?,
        ))
    }
}

/// The gradient of [`MaxPool`]: each output's gradient goes to the first of its four inputs
/// holding the maximum (as PyTorch routes ties).
struct MaxPoolGrad;

fn max_pool_grad(
    ch: impl Width,
    x: &[f32],
    grad: &[f32],
    dims: (usize, usize, usize, usize),
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    for_each_window(dims, |o, corners| {
        for i in 0..ch.get() {
            let best = corners
                .map(|at| at + i)
                .into_iter()
                .reduce(|a, b| if x[b] > x[a] { b } else { a })
                .unwrap_or(corners[0] + i);
            out[best] = grad[o + i];
        }
    });
    out
}

impl CustomOp2 for MaxPoolGrad {
    fn name(&self) -> &'static str {
        "max-pool-2x2-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(self.name(), s1, l1)?;
        let grad = values(self.name(), s2, l2)?;
        let dims = dims4(self.name(), l1)?;
        if grad.len() * 4 != x.len() {
            candle_core::bail!(
                "max-pool-2x2-grad: {} gradients for {} inputs",
                grad.len(),
                x.len()
            );
        }
        let out = with_width!(dims.3, |ch| max_pool_grad(ch, x, grad, dims));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// A same-padded, stride-1 convolution of channels-last maps `[n, h, w, c]` by weights in
/// candle's `[out, c, k, k]` layout (and an optional bias `[out]`): `[n, h, w, out]`.
pub(crate) fn convolve(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let (n, h, w, c) = x.dims4()?;
    let (out, _, kernel, _) = weight.dims4()?;
    let patches = x.contiguous()?.apply_op1(Unfold { kernel })?;
    let weights = weight
        .permute((2, 3, 1, 0))?
        .reshape((kernel * kernel * c, out))?;
    let mut y = patches.matmul(&weights)?;
    if let Some(bias) = bias {
        y = y.broadcast_add(bias)?;
    }
    y.reshape((n, h, w, out))
}

/// 2x2 max-pooling of channels-last maps `[n, h, w, c]` (even `h` and `w`).
pub(crate) fn max_pool_2x2(x: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op1(MaxPool)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn maps(n: usize, h: usize, w: usize, c: usize) -> Tensor {
        // Distinct values (37 is invertible mod the prime 149, and n h w c <= 149 here), so
        // pooling has no ties.
        let v: Vec<f32> = (0..n * h * w * c)
            .map(|i| ((i * 37) % 149) as f32 / 10.0 - 7.0)
            .collect();
        Tensor::from_vec(v, (n, h, w, c), &Device::Cpu).unwrap()
    }

    fn close(a: &Tensor, b: &Tensor) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 1e-4, "{x} vs {y}");
        }
    }

    /// The unfold-and-multiply convolution equals candle's `conv2d` (channels first) on the
    /// same weights, values and gradients.
    #[test]
    fn convolution_matches_candle_conv2d() {
        // 3 input channels take the run-time-width path, 1 and 8 the fixed-width ones.
        for c in [3, 1, 8] {
            convolution_matches_candle_conv2d_with(c);
        }
    }

    fn convolution_matches_candle_conv2d_with(c: usize) {
        let x = Var::from_tensor(&maps(2, 4, 6, c)).unwrap();
        let weight =
            Var::from_tensor(&(maps(5, c, 3, 3).reshape((5, c, 3, 3)).unwrap() * 0.1).unwrap())
                .unwrap();
        let bias = Tensor::new(&[0.1f32, -0.2, 0.3, 0.0, 0.5], &Device::Cpu).unwrap();
        let ours = convolve(x.as_tensor(), weight.as_tensor(), Some(&bias)).unwrap();
        let nchw = x.as_tensor().permute((0, 3, 1, 2)).unwrap();
        let theirs = nchw
            .conv2d(weight.as_tensor(), 1, 1, 1, 1)
            .unwrap()
            .broadcast_add(&bias.reshape((1, 5, 1, 1)).unwrap())
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        close(&ours, &theirs);
        // Gradients of a loss that weighs every output differently.
        let mix = maps(2, 4, 6, 5);
        let g_ours = (&ours * &mix)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g_theirs = (&theirs * &mix)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&x, &weight] {
            close(g_ours.get(v).unwrap(), g_theirs.get(v).unwrap());
        }
    }

    /// Pooling equals candle's `max_pool2d`, and each output's gradient reaches its window's
    /// maximum alone (worked out here by hand: candle's own `max_pool2d` gradient spreads it
    /// over the window when the input is a permuted view).
    #[test]
    fn pooling_matches_candle_max_pool() {
        // 3 channels take the run-time-width path, 8 the fixed-width one (1 x 4 x 4 x 8 = 128
        // values, still distinct).
        for dims in [(2, 4, 6, 3), (1, 4, 4, 8)] {
            pooling_matches_candle_max_pool_with(dims);
        }
    }

    fn pooling_matches_candle_max_pool_with((n, h, w, c): (usize, usize, usize, usize)) {
        let x = Var::from_tensor(&maps(n, h, w, c)).unwrap();
        let ours = max_pool_2x2(x.as_tensor()).unwrap();
        let theirs = x
            .as_tensor()
            .permute((0, 3, 1, 2))
            .unwrap()
            .max_pool2d(2)
            .unwrap()
            .permute((0, 2, 3, 1))
            .unwrap();
        close(&ours, &theirs);
        let mix = maps(n, h / 2, w / 2, c);
        let grads = (&ours * &mix)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let got: Vec<f32> = grads
            .get(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let xs: Vec<f32> = x.flatten_all().unwrap().to_vec1().unwrap();
        let ms: Vec<f32> = mix.flatten_all().unwrap().to_vec1().unwrap();
        let mut want = vec![0f32; xs.len()];
        let at = |i: usize, y: usize, x: usize, ch: usize| ((i * h + y) * w + x) * c + ch;
        for i in 0..n {
            for y in 0..h / 2 {
                for x in 0..w / 2 {
                    for ch in 0..c {
                        let window = [(0, 0), (0, 1), (1, 0), (1, 1)]
                            .map(|(dy, dx)| at(i, 2 * y + dy, 2 * x + dx, ch));
                        let best = window
                            .into_iter()
                            .max_by(|&a, &b| xs[a].total_cmp(&xs[b]))
                            .unwrap();
                        want[best] = ms[((i * (h / 2) + y) * (w / 2) + x) * c + ch];
                    }
                }
            }
        }
        assert_eq!(got, want);
    }

    #[test]
    fn odd_maps_are_refused_by_name() {
        let err = max_pool_2x2(&maps(1, 3, 4, 1)).unwrap_err();
        assert!(err.to_string().contains("max-pool-2x2"), "{err}");
    }
}
