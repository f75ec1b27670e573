//! IGVM files (the `igvm` crate) turned into a launch plan for Veil's KVM SNP launch, the
//! launch digest that plan produces, and the launch sequence that carries it out.

pub mod build;
pub mod launch;
mod offsets;
pub mod plan;

pub use build::{build_igvm, BuildError, BuildInput, BuildSummary, BuiltIgvm};
pub use launch::run_launch;
pub use plan::{
    load_igvm, IgvmError, LaunchPlan, ParameterArea, ParameterUse, PlanIdBlock, PlanPage,
};
