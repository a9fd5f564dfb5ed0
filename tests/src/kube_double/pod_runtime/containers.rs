//! A pod's containers on the engine: each created once it can be (image present,
//! config resolvable; every wait reported as the kubelet does), started, waited for,
//! its exit recorded (OOM kills included), and stopped.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{CreateContainerOptionsBuilder, StopContainerOptionsBuilder};
use futures::StreamExt;

use super::pod_run::{PodRun, Slot, Started, docker_time};
use crate::kube_double::docker::{self, Waiting};
use crate::kube_double::pod_status::{self, Exit};
use crate::kube_double::pulls;

impl PodRun {
    /// Waits until the container can be created (image present, config
    /// resolvable), creates and starts it. Reports each wait as the kubelet does.
    pub(super) async fn start_container(&self, slot: Slot) -> Started {
        let docker = &self.ctx.docker;
        let c = self.container(slot);
        let image = c.image.clone().unwrap_or_default();
        let name = self.names.container(&c.name);
        let mut pull_attempts = 0u32;
        let mut refused_pulls = 0u32;
        let flaky = self.ctx.options.flaky_pulls.get(&image);
        let wait = |w: Waiting| {
            self.change_container(slot, |cs| {
                let mut next = pod_status::waiting(&c.name, &image, w.reason, Some(w.message));
                next.restart_count = cs.restart_count;
                next.last_state = cs.last_state.take();
                *cs = next;
            });
        };
        let body = loop {
            if let Some(flaky) = flaky
                && refused_pulls < flaky.failures
            {
                // A registry refusing this attempt: the failure, then the back-off.
                refused_pulls += 1;
                wait(Waiting {
                    reason: "ErrImagePull",
                    message: flaky.message(&image),
                });
                tokio::time::sleep(self.backoff()).await;
                wait(Waiting {
                    reason: "ImagePullBackOff",
                    message: pulls::back_off(&image),
                });
                tokio::time::sleep(self.backoff()).await;
                continue;
            }
            match docker::image_user(docker, &image).await {
                Err(e) => {
                    pull_attempts += 1;
                    // The kubelet alternates between the failed pull and the back-off.
                    let reason = if pull_attempts % 2 == 1 {
                        "ErrImagePull"
                    } else {
                        "ImagePullBackOff"
                    };
                    let message = if docker::is_not_found(&e) {
                        if reason == "ErrImagePull" {
                            pulls::not_found(&image)
                        } else {
                            pulls::back_off(&image)
                        }
                    } else {
                        format!("failed to inspect image {image:?}: {}", docker::message(&e))
                    };
                    wait(Waiting { reason, message });
                }
                Ok(user) => {
                    let termination_file = self.ctx.captures.termination_file(&name);
                    if let Err(e) = &termination_file {
                        tracing::warn!(container = %name, error = %e, "no termination message file");
                    }
                    match docker::container_body(
                        &self.pod,
                        c,
                        user.as_deref(),
                        &self.ctx.store,
                        &self.names,
                        &self.labels,
                        termination_file.ok().as_deref(),
                    ) {
                        Ok(body) => {
                            let (d, name) = (docker.clone(), name.clone());
                            let created = self
                                .engine(async move {
                                    // A leftover from an earlier failed attempt.
                                    let force = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                                        .force(true)
                                        .build();
                                    let _ = d.remove_container(&name, Some(force)).await;
                                    let opts = CreateContainerOptionsBuilder::new().name(&name).build();
                                    d.create_container(Some(opts), body).await
                                })
                                .await;
                            match created {
                                Ok(created) => break created.id,
                                Err(e) => wait(Waiting {
                                    reason: "CreateContainerError",
                                    message: docker::message(&e),
                                }),
                            }
                        }
                        Err(w) => wait(w),
                    }
                }
            }
            tokio::time::sleep(self.backoff()).await;
        };
        {
            // A restart replaces the slot's earlier (removed) container.
            let mut started = self.started.lock().unwrap_or_else(|p| p.into_inner());
            started.retain(|(s, _)| *s != slot);
            started.push((slot, body.clone()));
        }
        // Before the start, so no output is missed.
        if let Err(e) = self.ctx.captures.attach(docker, &name).await {
            tracing::warn!(container = %name, error = %docker::message(&e), "cannot capture output; the log falls back to the engine's");
        }
        let (d, id) = (docker.clone(), body.clone());
        let started = self
            .engine(async move { d.start_container(&id, None).await })
            .await;
        if let Err(e) = started {
            // As containerd reports a process that could not be started.
            let now = crate::kube_double::store::now();
            self.change_container(slot, |cs| {
                pod_status::set_terminated(
                    cs,
                    Some(&body),
                    Exit {
                        code: 128,
                        reason: "StartError",
                        message: Some(docker::message(&e)),
                        started: Some(now.clone()),
                        finished: Some(now),
                    },
                )
            });
            return Started::FailedToStart(128);
        }
        let inspect = docker.inspect_container(&body, None).await.ok();
        let started = inspect
            .as_ref()
            .and_then(|i| i.state.as_ref())
            .and_then(|s| docker_time(s.started_at.as_deref()))
            .unwrap_or_else(crate::kube_double::store::now);
        let image_id = inspect.and_then(|i| i.image).unwrap_or_default();
        self.change(|s| {
            let cs = match slot {
                Slot::Init(i) => &mut s.init[i],
                Slot::Main(i) => &mut s.main[i],
            };
            pod_status::set_running(cs, &body, &image_id, started);
            super::probes::before_first_probe(cs, c);
            if matches!(slot, Slot::Main(_)) && s.phase == "Pending" {
                s.phase = "Running";
            }
        });
        Started::Running(body)
    }

    /// Waits for the container to exit and records how it ended.
    pub(super) async fn wait_container(&self, slot: Slot, id: &str) -> i32 {
        let mut wait = self.ctx.docker.wait_container(id, None);
        // The stream ends (or errors, for a non-zero exit) when the container stops.
        let _ = wait.next().await;
        self.record_exit(slot, id, false).await.unwrap_or(137)
    }

    /// `killed`: the double stopped it (pod deleted, deadline), so an exit 137 is
    /// that kill, not an OOM kill worth looking up.
    async fn record_exit(&self, slot: Slot, id: &str, killed: bool) -> Option<i32> {
        let inspect = self.ctx.docker.inspect_container(id, None).await.ok()?;
        let state = inspect.state?;
        if state.running == Some(true) {
            return None;
        }
        let code = state.exit_code.unwrap_or(0) as i32;
        let limited = inspect
            .host_config
            .as_ref()
            .and_then(|h| h.memory)
            .is_some_and(|m| m > 0);
        let oom = state.oom_killed == Some(true)
            || (code == 137
                && limited
                && !killed
                && self.oom_event(id, state.started_at.as_deref()).await);
        let reason = if oom {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let name = inspect
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/');
        let exit = Exit {
            code,
            reason,
            message: self.ctx.captures.termination_message(name),
            started: docker_time(state.started_at.as_deref()),
            finished: docker_time(state.finished_at.as_deref()),
        };
        self.change_container(slot, |cs| pod_status::set_terminated(cs, Some(id), exit));
        Some(code)
    }

    /// Whether the engine reported an OOM kill for the container. The engine's
    /// `State.OOMKilled` loses a race with the exit on cgroup v1 (the exit event
    /// can overwrite it), while the `oom` event is always emitted — though possibly
    /// a moment after the exit: a bounded look at the event log.
    async fn oom_event(&self, id: &str, started_at: Option<&str>) -> bool {
        use bollard::query_parameters::EventsOptionsBuilder;
        let since = started_at
            .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_second() - 1);
        let filters = HashMap::from([
            ("container".to_owned(), vec![id.to_owned()]),
            ("event".to_owned(), vec!["oom".to_owned()]),
        ]);
        for _ in 0..5 {
            // `until` in the past or now: the engine answers from its log at once. With
            // its fraction: whole seconds would leave out an event of this second.
            let now = k8s_openapi::jiff::Timestamp::now();
            let until = format!("{}.{:09}", now.as_second(), now.subsec_nanosecond());
            let opts = EventsOptionsBuilder::new()
                .since(&since.to_string())
                .until(&until)
                .filters(&filters)
                .build();
            let events = self.ctx.docker.events(Some(opts));
            let seen = tokio::time::timeout(Duration::from_secs(5), events.take(1).count()).await;
            if seen.is_ok_and(|n| n > 0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Updates every started container that no longer runs (after a kill).
    pub(super) async fn record_exits(&self) {
        let started = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (slot, id) in started {
            let running = {
                let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match slot {
                    Slot::Init(i) => pod_status::is_running(&s.init[i]),
                    Slot::Main(i) => pod_status::is_running(&s.main[i]),
                }
            };
            if running {
                self.record_exit(slot, &id, true).await;
            }
        }
    }

    pub(super) async fn stop_container(&self, id: &str, grace: i64) {
        let opts = StopContainerOptionsBuilder::new()
            .t(grace.clamp(0, 3600) as i32)
            .build();
        let _ = self.ctx.docker.stop_container(id, Some(opts)).await;
    }

    /// Stops all of the pod's containers at once (and then the sandbox).
    pub(super) async fn stop_containers(&self, grace: i64) {
        let started = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        futures::future::join_all(started.iter().map(|(_, id)| self.stop_container(id, grace)))
            .await;
        self.stop_container(&self.names.sandbox(), 0).await;
    }
}
