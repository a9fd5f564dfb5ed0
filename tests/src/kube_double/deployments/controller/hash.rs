//! The `pod-template-hash` of a pod template, in the shape `controller.ComputeHash`
//! (pkg/controller/controller_utils.go) gives it: FNV-1a (32 bit) of the template,
//! then of `collisionCount` (little-endian, in 8 bytes) when set, the decimal
//! number mapped through `rand.SafeEncodeString`'s alphabet. Upstream hashes Go's
//! `spew` dump of the struct, which cannot be reproduced here; the double hashes
//! the template's JSON instead: equal templates hash equally, any change gives a
//! new hash, and the values look like a cluster's (`5d4f7c8b9`).

use k8s_openapi::api::core::v1::PodTemplateSpec;

/// The alphabet of `rand.SafeEncodeString` (no vowels, no 0/1/3 look-alikes).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn fnv1a(bytes: &[u8], mut h: u32) -> u32 {
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

pub fn compute(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let json = serde_json::to_vec(template).expect("templates serialize");
    let mut h = fnv1a(&json, 0x811c_9dc5);
    if let Some(c) = collision_count {
        let mut buf = [0u8; 8];
        buf[..4].copy_from_slice(&(c as u32).to_le_bytes());
        h = fnv1a(&buf, h);
    }
    h.to_string()
        .bytes()
        .map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_and_sensitive() {
        let a: PodTemplateSpec = serde_json::from_value(
            serde_json::json!({"spec": {"containers": [{"name": "c", "image": "v1"}]}}),
        )
        .unwrap();
        let mut b = a.clone();
        b.spec.as_mut().unwrap().containers[0].image = Some("v2".into());
        assert_eq!(compute(&a, None), compute(&a.clone(), None));
        assert_ne!(compute(&a, None), compute(&b, None));
        assert_ne!(compute(&a, None), compute(&a, Some(1)));
        assert!(compute(&a, None).bytes().all(|c| ALPHANUMS.contains(&c)));
        assert_eq!(fnv1a(b"a", 0x811c_9dc5), 0xe40c_292c);
    }
}
