//! The reducer's command-line flags (shared by `rollq aggregate` and `rollq worker`).

use super::Spec;

/// Reducer options; every flag also reads `ROLLQ_<FLAG>`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct ReducerArgs {}

impl ReducerArgs {
    /// Validates the flags into a [`Spec`].
    pub fn to_spec(&self) -> Result<Spec, String> {
        Ok(Spec::default())
    }
}
