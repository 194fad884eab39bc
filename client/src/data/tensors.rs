//! A node's data as candle tensors.

use candle_core::{Device, Tensor};

/// A labelled set as tensors.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// Standardised features `[n, inputs]`.
    pub x: Tensor,
    /// Labels as a `[n]` u32 tensor.
    pub y: Tensor,
    /// Labels as plain values.
    pub labels: Vec<u32>,
}

impl Labelled {
    /// Builds the tensors from standardised row-major features and labels.
    pub fn new(
        features: Vec<f32>,
        width: usize,
        labels: Vec<u32>,
    ) -> candle_core::Result<Labelled> {
        let y = Tensor::new(labels.as_slice(), &device())?;
        Ok(Labelled {
            x: matrix(features, width)?,
            y,
            labels,
        })
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// True when there are no rows.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The rows `rows` (each below [`Labelled::len`]), in that order.
    pub fn rows(&self, rows: &[u32]) -> candle_core::Result<Labelled> {
        let ids = Tensor::new(rows, &device())?;
        Ok(Labelled {
            x: self.x.index_select(&ids, 0)?,
            y: self.y.index_select(&ids, 0)?,
            labels: rows.iter().map(|&r| self.labels[r as usize]).collect(),
        })
    }
}

/// Builds a `[rows, width]` tensor from row-major values.
pub fn matrix(values: Vec<f32>, width: usize) -> candle_core::Result<Tensor> {
    let rows = values.len() / width.max(1);
    Tensor::from_vec(values, (rows, width), &device())
}

/// The device: students are small and run on the CPU.
pub fn device() -> Device {
    Device::Cpu
}
