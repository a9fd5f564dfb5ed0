//! What a run is made of, as rules over plans and rows: its stage rows from a plan,
//! and the trust check (`from_plan`), which runner may run each stage (`routing`), and
//! what follows from its stages' states (`reconcile`).

pub mod from_plan;
pub mod reconcile;
pub mod routing;
