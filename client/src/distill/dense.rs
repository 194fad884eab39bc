//! A layer's bias and its ReLU as one custom op with its own gradient.
//!
//! Spelled in candle's ops, `relu(x + b)` is a broadcast add and a ReLU forward, and backward
//! a zero tensor, a comparison, a cast and a product for the ReLU, then a strided reduction
//! over the batch for the bias (candle sums a broadcast dimension with a generic strided map).
//! A profile of the default digits run put those reductions and element-wise maps at about a
//! fifth of its time. Here the forward is one pass, and the backward is one masking pass and
//! one pass summing rows into the bias gradient.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};

use super::conv::values;

/// `x + bias` along the last dimension (`x` is `[..., c]`, `bias` is `[c]`), then ReLU if
/// `relu`.
pub(crate) fn add_bias(x: &Tensor, bias: &Tensor, relu: bool) -> candle_core::Result<Tensor> {
    x.contiguous()?.apply_op2(bias, AddBias { relu })
}

struct AddBias {
    relu: bool,
}

/// The last dimension of `layout`, which must match the bias's length.
fn channels(name: &str, x: &Layout, bias: &Layout) -> candle_core::Result<usize> {
    let c = x.dims().last().copied().unwrap_or(0);
    if bias.dims() != [c] || c == 0 {
        candle_core::bail!(
            "{name}: the bias {:?} must match the last dimension of {:?}",
            bias.dims(),
            x.dims()
        );
    }
    Ok(c)
}

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        if self.relu {
            "add-bias-relu"
        } else {
            "add-bias"
        }
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let c = channels(self.name(), l1, l2)?;
        let x = values(self.name(), s1, l1)?;
        let bias = values(self.name(), s2, l2)?;
        let mut out = Vec::with_capacity(x.len());
        for row in x.chunks_exact(c) {
            if self.relu {
                out.extend(row.iter().zip(bias).map(|(v, b)| (v + b).max(0.0)));
            } else {
                out.extend(row.iter().zip(bias).map(|(v, b)| v + b));
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _bias: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // ReLU passes the gradient where its output is positive (PyTorch's convention at 0).
        let grad = if self.relu {
            grad.apply_op2_no_bwd(res, &ReluMask)?
        } else {
            grad
        };
        let bias_grad = grad.apply_op1_no_bwd(&SumRows)?;
        Ok((Some(grad), Some(bias_grad)))
    }
}

/// The gradient where the ReLU's output (the second argument) is positive, zero elsewhere.
struct ReluMask;

impl CustomOp2 for ReluMask {
    fn name(&self) -> &'static str {
        "relu-mask"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let grad = values(self.name(), s1, l1)?;
        let out = values(self.name(), s2, l2)?;
        if l1.dims() != l2.dims() {
            candle_core::bail!("relu-mask: shapes {:?} and {:?}", l1.dims(), l2.dims());
        }
        let masked = grad
            .iter()
            .zip(out)
            .map(|(&g, &y)| if y > 0.0 { g } else { 0.0 })
            .collect();
        Ok((CpuStorage::F32(masked), l1.shape().clone()))
    }
}

/// `[..., c]` summed over every dimension but the last, row after row, into `[c]`.
struct SumRows;

impl CustomOp1 for SumRows {
    fn name(&self) -> &'static str {
        "sum-rows"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = values(self.name(), storage, layout)?;
        let c = layout.dims().last().copied().unwrap_or(0);
        if c == 0 {
            candle_core::bail!("sum-rows: no columns in {:?}", layout.dims());
        }
        let mut sums = vec![0f32; c];
        for row in x.chunks_exact(c) {
            for (s, v) in sums.iter_mut().zip(row) {
                *s += v;
            }
        }
        Ok((CpuStorage::F32(sums), Shape::from(c)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;

    /// Values and gradients equal candle's own `relu(x + b)` and `x + b` (summed through a
    /// weighted loss so each output has its own gradient), on maps with a leading batch of
    /// several dimensions as the convolutions have.
    #[test]
    fn matches_candles_broadcast_add_and_relu_with_gradients() -> candle_core::Result<()> {
        let device = Device::Cpu;
        for dims in [vec![5, 7], vec![2, 3, 4, 6]] {
            let c = *dims.last().unwrap();
            let n: usize = dims.iter().product();
            // Values straddling zero; none exactly at it, where the two ReLU gradients may
            // differ by convention.
            let xs: Vec<f32> = (0..n)
                .map(|i| ((i * 37 % 23) as f32 - 11.3) / 7.0)
                .collect();
            let bs: Vec<f32> = (0..c).map(|i| (i as f32 - 2.1) / 5.0).collect();
            let weights = Tensor::arange(0f32, n as f32, &device)?.reshape(dims.as_slice())?;
            for relu in [false, true] {
                let x = Var::from_tensor(&Tensor::from_vec(xs.clone(), dims.as_slice(), &device)?)?;
                let b = Var::from_tensor(&Tensor::from_vec(bs.clone(), c, &device)?)?;
                let ours = add_bias(x.as_tensor(), b.as_tensor(), relu)?;
                let mut theirs = x.as_tensor().broadcast_add(b.as_tensor())?;
                if relu {
                    theirs = theirs.relu()?;
                }
                // Largest difference relative to the largest value.
                let close = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> {
                    let diff = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                    let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                    Ok(diff / scale.max(1.0))
                };
                assert!(close(&ours, &theirs)? < 1e-6);
                let g_ours = (ours * &weights)?.sum_all()?.backward()?;
                let g_theirs = (theirs * &weights)?.sum_all()?.backward()?;
                for var in [&x, &b] {
                    let (a, b) = (g_ours.get(var).unwrap(), g_theirs.get(var).unwrap());
                    assert_eq!(a.dims(), b.dims());
                    // The same sums in perhaps another order: equal up to f32 rounding.
                    assert!(close(a, b)? < 1e-6, "relu {relu}, dims {dims:?}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn refuses_a_bias_that_does_not_match_by_name() {
        let device = Device::Cpu;
        let x = Tensor::zeros((2, 3), DType::F32, &device).unwrap();
        let b = Tensor::zeros(4, DType::F32, &device).unwrap();
        let err = add_bias(&x, &b, true).unwrap_err().to_string();
        assert!(
            err.contains("add-bias-relu") && err.contains("[4]"),
            "{err}"
        );
    }
}
