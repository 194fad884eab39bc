//! Which student each simulated client trains: nodes of one federation may use different
//! architectures, since only soft labels on public records are exchanged.

use fd_client::distill::Architecture;
use serde::Serialize;

/// The students of a federation: all of one kind, or half and half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum StudentMix {
    /// Every client an MLP (`training.hidden`).
    #[default]
    Mlp,
    /// Every client a small CNN (`training.cnn`; image data only).
    Cnn,
    /// Even-numbered clients an MLP, odd-numbered ones a CNN: architectures differ, only soft
    /// labels are exchanged.
    Mixed,
}

impl StudentMix {
    /// The architecture of client `i`.
    pub fn architecture(self, i: usize) -> Architecture {
        match self {
            StudentMix::Mlp => Architecture::Mlp,
            StudentMix::Cnn => Architecture::Cnn,
            StudentMix::Mixed if i % 2 == 1 => Architecture::Cnn,
            StudentMix::Mixed => Architecture::Mlp,
        }
    }
}
