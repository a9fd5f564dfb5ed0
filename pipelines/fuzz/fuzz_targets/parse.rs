#![no_main]

use libfuzzer_sys::fuzz_target;
use pipelines::{Event, EventContext};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(pipeline) = pipelines::parse(".slipway.yml", text) else {
        return;
    };
    for event in Event::ALL {
        let ctx = EventContext {
            event,
            branch: Some("main".into()),
            tag: Some("v1.0.0".into()),
            cron: pipeline.triggers.cron.keys().next().cloned(),
            sha: "0123456789abcdef".into(),
            changed_paths: Some(vec!["src/lib.rs".into()]),
            ..Default::default()
        };
        let _ = pipelines::plan(&pipeline, &ctx);
    }
});
