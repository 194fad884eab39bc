//! Distillation on the node: the student, its loss, its schedules, augmentation, the local
//! teacher and the learner that trains them, and what a private student makes of the target.
//!
//! Everything here is synchronous and CPU-bound; the federation driver runs it on a blocking
//! thread. Nothing here sends anything: what leaves the node is made in [`crate::privacy`].

pub mod augment;
pub mod config;
mod conv;
mod dense;
pub mod learner;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod student;
pub mod target;

pub use crate::data::device;
pub use config::{
    AUTO_TEMPERATURES, Architecture, CnnConfig, ImageShape, LocalTeacherConfig, Temperature,
    TrainConfig,
};
pub use learner::{
    HarmCheck, Learner, TargetTrust, TemperaturePoint, TemperatureSearch, train_local_only,
};
pub use loss::{distillation_loss, distillation_rows, distillation_term, row_confidence};
pub use optim::FusedAdamW;
pub use schedule::ScheduleShape;
pub use student::{ConvLayers, ModelCard, ModelError, Student, StudentConfig};
