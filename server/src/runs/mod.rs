//! What a run is made of, as rules over plans and rows: its stage rows from a plan,
//! and the trust check (`from_plan`), which runner may run each stage (`routing`), and
//! what follows from its stages' states (`reconcile`), and whether a manual run would
//! run anything (`manual`).

pub mod from_plan;
pub mod manual;
pub mod reconcile;
pub mod routing;
