//! Pass: duplicate strong definitions are one error listing them all.

use crate::error::LinkError;
use crate::graph::LinkGraph;

/// Fail with every duplicate strong definition.
pub fn check_duplicates(graph: &mut LinkGraph) -> Result<(), LinkError> {
    let dups = graph.take_duplicates();
    if dups.is_empty() {
        return Ok(());
    }
    Err(LinkError::DuplicateSymbols {
        duplicates: dups
            .into_iter()
            .map(|(n, objs)| {
                (
                    n.to_string(),
                    objs.iter()
                        .map(|o| graph.object_name(Some(*o)).to_string())
                        .collect(),
                )
            })
            .collect(),
    })
}
