//! A strategy as the controller follows it: one flat list of actions, and the traffic
//! the cluster should show at each of them. Pure.
//!
//! The persisted step is an index into [`actions`]; what the cluster should look like at
//! a step ([`Desired`]) is folded from the actions up to it, so re-applying a step after
//! a crash or a lost lease asks for the same objects again and changes nothing.

use pipelines::{Analysis, CanaryStep, Pause, RequestMatch, Strategy, Traffic};

/// Which analysis a measurement belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnalysisKind {
    Step,
    Background,
    PrePromotion,
    PostPromotion,
}

impl AnalysisKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnalysisKind::Step => "step",
            AnalysisKind::Background => "background",
            AnalysisKind::PrePromotion => "pre_promotion",
            AnalysisKind::PostPromotion => "post_promotion",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Canary and rolling: the new version takes this share (by pods or by router).
    Weight(u8),
    Pause(Pause),
    Analysis(Analysis, AnalysisKind),
    /// A/B: requests that match go to the new version.
    Match(RequestMatch),
    /// Shadow: this share of requests is copied to the new version.
    Mirror(u8),
    /// Blue-green: the new version at full size behind the preview Service.
    Preview,
    /// Blue-green: the active Service selects the new version.
    Switch,
    /// Blue-green: the old version stays scaled this long after the switch, so a
    /// rollback is instant.
    KeepOld(u64),
    /// Recreate: every old pod goes, then the new version comes.
    Recreate,
    /// The stable Deployment runs the new image, all traffic goes to it, and every
    /// object of the rollout is removed.
    Finish,
}

impl Action {
    /// For logs and the UI.
    pub fn describe(&self) -> String {
        match self {
            Action::Weight(w) => format!("set weight {w}%"),
            Action::Pause(Pause::Elapsed { secs }) => format!("pause {secs}s"),
            Action::Pause(Pause::Promoted) => "pause until promoted".into(),
            Action::Analysis(_, kind) => format!("{} analysis", kind.as_str().replace('_', "-")),
            Action::Match(RequestMatch::Header { name, value }) => {
                format!("route requests with header {name}: {value} to the new version")
            }
            Action::Match(RequestMatch::Cookie { name, value }) => {
                format!("route requests with cookie {name}={value} to the new version")
            }
            Action::Mirror(p) => format!("mirror {p}% of requests to the new version"),
            Action::Preview => "bring the new version up behind the preview service".into(),
            Action::Switch => "switch the active service to the new version".into(),
            Action::KeepOld(s) => format!("keep the old version scaled for {s}s"),
            Action::Recreate => "replace every old pod".into(),
            Action::Finish => "promote the new version to stable".into(),
        }
    }
}

/// The strategy's actions, ending with [`Action::Finish`].
pub fn actions(strategy: &Strategy) -> Vec<Action> {
    let mut out = Vec::new();
    match strategy {
        Strategy::Recreate => out.push(Action::Recreate),
        Strategy::Rolling {
            batches,
            pause,
            analysis,
        } => {
            for (i, b) in batches.iter().enumerate() {
                out.push(Action::Weight(*b));
                if i + 1 < batches.len() {
                    if let Some(p) = pause {
                        out.push(Action::Pause(*p));
                    }
                    if let Some(a) = analysis {
                        out.push(Action::Analysis(a.clone(), AnalysisKind::Step));
                    }
                }
            }
        }
        Strategy::BlueGreen(bg) => {
            out.push(Action::Preview);
            if let Some(a) = &bg.pre_promotion {
                out.push(Action::Analysis(a.clone(), AnalysisKind::PrePromotion));
            }
            if !bg.auto_promote {
                out.push(Action::Pause(Pause::Promoted));
            }
            out.push(Action::Switch);
            if let Some(a) = &bg.post_promotion {
                out.push(Action::Analysis(a.clone(), AnalysisKind::PostPromotion));
            }
            out.push(Action::KeepOld(bg.scale_down_delay_secs));
        }
        Strategy::Canary(c) => {
            for s in &c.steps {
                out.push(match s {
                    CanaryStep::Weight { weight } => Action::Weight(*weight),
                    CanaryStep::Pause(p) => Action::Pause(*p),
                    CanaryStep::Analysis(a) => Action::Analysis(a.clone(), AnalysisKind::Step),
                    CanaryStep::Match(m) => Action::Match(m.clone()),
                    CanaryStep::Mirror { percent } => Action::Mirror(*percent),
                });
            }
        }
    }
    out.push(Action::Finish);
    out
}

/// The analysis that runs from the first step to the last, if any.
pub fn background(strategy: &Strategy) -> Option<&Analysis> {
    match strategy {
        Strategy::Canary(c) => c.background.as_ref(),
        _ => None,
    }
}

/// How the canary's traffic is routed (`replicas` for rolling, blue-green, recreate).
pub fn traffic(strategy: &Strategy) -> Traffic {
    match strategy {
        Strategy::Canary(c) => c.traffic.clone(),
        _ => Traffic::Replicas,
    }
}

/// What the cluster should show while the rollout is at a step.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Desired {
    /// The new version's share of traffic (canary, rolling).
    pub weight: u8,
    pub matched: Option<RequestMatch>,
    pub mirror: Option<u8>,
    /// Blue-green: the new version is up at full size.
    pub preview: bool,
    /// Blue-green: the active Service selects the new version.
    pub switched: bool,
}

impl Desired {
    /// Whether the rollout's own Deployment (the canary, or blue-green's new version)
    /// should exist.
    pub fn canary_up(&self) -> bool {
        self.weight > 0 || self.matched.is_some() || self.mirror.is_some() || self.preview
    }
}

/// The traffic at step `step` (the actions before it and itself).
pub fn desired_at(actions: &[Action], step: usize) -> Desired {
    let mut d = Desired::default();
    for a in actions.iter().take(step.saturating_add(1)) {
        match a {
            Action::Weight(w) => d.weight = *w,
            Action::Match(m) => d.matched = Some(m.clone()),
            Action::Mirror(p) => d.mirror = Some(*p),
            Action::Preview => d.preview = true,
            Action::Switch => d.switched = true,
            _ => {}
        }
    }
    d
}

/// Pods of the new version for `weight`% of `replicas`: at least one while the weight
/// is above zero (rounded up, as Argo Rollouts scales a canary), all at 100.
pub fn canary_replicas(replicas: i32, weight: u8) -> i32 {
    if weight == 0 || replicas <= 0 {
        return 0;
    }
    let r = i64::from(replicas) * i64::from(weight);
    ((r + 99) / 100).clamp(1, i64::from(replicas)) as i32
}

#[cfg(test)]
mod tests {
    use pipelines::{BlueGreen, CanaryStrategy};

    use super::*;

    #[test]
    fn rolling_batches_pause_and_analyse_between_batches_only() {
        let a = pipelines::Analysis {
            checks: vec![],
            interval_secs: 1,
            count: Some(1),
            failure_limit: 0,
            inconclusive_limit: 0,
        };
        let s = Strategy::Rolling {
            batches: vec![25, 50, 100],
            pause: Some(Pause::Elapsed { secs: 5 }),
            analysis: Some(a.clone()),
        };
        let got = actions(&s);
        assert_eq!(got.len(), 8, "{got:?}");
        assert_eq!(got[0], Action::Weight(25));
        assert_eq!(got[1], Action::Pause(Pause::Elapsed { secs: 5 }));
        assert!(matches!(got[2], Action::Analysis(_, AnalysisKind::Step)));
        assert_eq!(got[6], Action::Weight(100));
        assert_eq!(got[7], Action::Finish);
    }

    #[test]
    fn blue_green_waits_for_a_person_unless_auto_promoted() {
        let mut bg = BlueGreen {
            preview_service: None,
            pre_promotion: None,
            auto_promote: false,
            post_promotion: None,
            scale_down_delay_secs: 30,
        };
        let manual = actions(&Strategy::BlueGreen(bg.clone()));
        assert_eq!(
            manual,
            vec![
                Action::Preview,
                Action::Pause(Pause::Promoted),
                Action::Switch,
                Action::KeepOld(30),
                Action::Finish
            ]
        );
        bg.auto_promote = true;
        assert!(!actions(&Strategy::BlueGreen(bg)).contains(&Action::Pause(Pause::Promoted)));
    }

    #[test]
    fn desired_traffic_folds_the_steps_so_far() {
        let s = Strategy::Canary(CanaryStrategy {
            traffic: Traffic::Gateway {
                route: "web".into(),
            },
            steps: vec![
                CanaryStep::Weight { weight: 20 },
                CanaryStep::Match(RequestMatch::Header {
                    name: "x-group".into(),
                    value: "beta".into(),
                }),
                CanaryStep::Mirror { percent: 50 },
                CanaryStep::Weight { weight: 100 },
            ],
            background: None,
        });
        let acts = actions(&s);
        assert_eq!(desired_at(&acts, 0).weight, 20);
        assert!(desired_at(&acts, 0).matched.is_none());
        let at2 = desired_at(&acts, 2);
        assert_eq!((at2.weight, at2.mirror), (20, Some(50)));
        assert!(at2.matched.is_some() && at2.canary_up());
        assert_eq!(desired_at(&acts, 3).weight, 100);
    }

    #[test]
    fn canary_replicas_round_up_and_stay_within_the_total() {
        assert_eq!(canary_replicas(4, 0), 0);
        assert_eq!(canary_replicas(4, 1), 1);
        assert_eq!(canary_replicas(4, 25), 1);
        assert_eq!(canary_replicas(4, 30), 2);
        assert_eq!(canary_replicas(4, 100), 4);
        assert_eq!(canary_replicas(0, 50), 0);
    }
}
