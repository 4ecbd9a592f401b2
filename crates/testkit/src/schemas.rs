//! The SCIM schema registry from the repository's `schemas/` directory, as the gateway loads it at start, for
//! tests of crates below the gateway (which has its own loader, `scimgate::schemas::load`).

use scimgate_scim::schema::{Registry, SchemaDoc};

/// The registry built from `schemas/*.json` (`resource-types.json` for the resource types). Panics on a bad file.
pub fn registry() -> Registry {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
    let mut docs = Vec::new();
    let mut types = None;
    for e in std::fs::read_dir(&dir).expect("schemas dir").flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&p).expect("read schema");
        let doc = SchemaDoc {
            source: p.display().to_string(),
            json: serde_json::from_str(&text).expect("schema json"),
        };
        if p.ends_with("resource-types.json") {
            types = Some(doc);
        } else {
            docs.push(doc);
        }
    }
    Registry::build(docs, &types.expect("resource types")).expect("registry")
}
