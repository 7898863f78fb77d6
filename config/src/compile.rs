//! Pure compilation of a validated snapshot into the read-optimised tables each plane loads.
//! Deterministic: the same snapshot always gives an equal result.

use sha2::{Digest, Sha256};

use crate::router_table::RouterTable;
use crate::shuttle_plan::ShuttlePlan;
use crate::validate::Validated;

/// Everything the planes need, built off their hot paths; each is swapped in as one pointer.
#[derive(Debug, Clone, PartialEq)]
pub struct Compiled {
    pub router: RouterTable,
    pub shuttle: ShuttlePlan,
}

/// Compile a validated snapshot.
pub fn compile(v: &Validated) -> Compiled {
    let digest = digest(v);
    Compiled {
        router: RouterTable::build(v, &digest),
        shuttle: ShuttlePlan::build(v, &digest),
    }
}

/// A short content hash of the snapshot: equal snapshots, equal digests.
pub fn digest(v: &Validated) -> String {
    let bytes = serde_json::to_vec(&**v).expect("a snapshot always serialises");
    hex::encode(&Sha256::digest(&bytes)[..8])
}
