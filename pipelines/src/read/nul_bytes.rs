//! NUL bytes (`"\0"` in a double-quoted string). Scripts, environment values and
//! arguments reach processes as NUL-terminated C strings, so a runner refuses a stage
//! holding one (`StageSpec::validate`), and nothing else in a pipeline has a use for one.

use marked_yaml::Node;

use super::Ctx;
use crate::diagnostic::{Pos, codes};
use crate::yaml::{key_pos, node_pos};

/// Reports every key and value under `root` holding a NUL byte. Iterative: the
/// nesting depth of a file is the author's to choose.
pub(crate) fn report_nul_bytes(ctx: &mut Ctx<'_>, root: &Node) {
    let mut stack = vec![root];
    while let Some(node) = stack.pop() {
        match node {
            Node::Scalar(s) => {
                if s.as_str().contains('\0') {
                    report(ctx, node_pos(node));
                }
            }
            Node::Sequence(items) => stack.extend(items.iter()),
            Node::Mapping(m) => {
                for (k, v) in m.iter() {
                    if k.as_str().contains('\0') {
                        report(ctx, key_pos(k));
                    }
                    stack.push(v);
                }
            }
        }
    }
}

fn report(ctx: &mut Ctx<'_>, pos: Pos) {
    ctx.error(
        codes::INVALID_VALUE,
        pos,
        "text holds a NUL byte (`\\0`)",
        Some("remove it: scripts and environment values cannot carry NUL bytes".into()),
    );
}
