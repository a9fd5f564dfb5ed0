//! Delivery: the rules that take a tested run to an environment, pure — an
//! environment's gate (`gate`: its rules raised by the YAML's `approval:`, which refs
//! may deploy, who may vote, what a gate's state means for its stage) and promotion
//! without rebuild (`promotion`: which stages of a stored plan a promotion runs and
//! which it carries over). The store keeps the rows (`store::environments`,
//! `store::deployments`, `store::gates`, `store::votes`); the API and the CLI are the
//! people's side (`api::environments`, `api::approvals`, `api::promotions`).

pub mod gate;
pub mod promotion;
