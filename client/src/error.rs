//! Why a node run failed.

use std::path::PathBuf;

use crate::data::DataError;
use crate::distill::ModelError;
use crate::federation::SessionError;
use crate::privacy::PrivacyError;

/// Why a node run failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A data file is unusable.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The TLS files are unusable.
    #[error(transparent)]
    Tls(#[from] fd_transport::TlsError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The session with the coordinator failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// Outputs could not be written.
    #[error("{path}: cannot write: {source}")]
    Output {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The data does not fit the config.
    #[error("{0}")]
    Mismatch(String),
    /// The output directory holds a finished run, which a new run would overwrite.
    #[error(
        "{}: holds a finished run ({summary}); a new run would overwrite its model and \
         report. Pass --force to overwrite it, or set another output_dir",
        dir.display()
    )]
    Finished {
        /// The output directory.
        dir: PathBuf,
        /// What the finished run's report says, in brief.
        summary: String,
    },
    /// The privacy ledger or budget is unusable.
    #[error(transparent)]
    Privacy(#[from] PrivacyError),
}
