//! IGVM files (the `igvm` crate) turned into a launch plan for Veil's KVM SNP launch, and the
//! launch digest that plan produces.

mod plan;

pub use plan::{load_igvm, IgvmError, LaunchPlan, ParameterArea, ParameterUse, PlanPage};
