//! What a run is made of, as rules over plans and rows: its stage rows from a plan,
//! and the trust check (`from_plan`), and which runner may run each stage (`routing`).

pub mod from_plan;
pub mod routing;
