//! The schema registry: RFC 7643 schema and resource-type definitions, loaded from JSON at start.
//!
//! The registry does no I/O: the gateway reads `schemas/*.json` and hands the parsed documents to
//! [`Registry::build`]. A schema document may carry `"x-scimgate-extends": ["User"]` (and optionally
//! `"x-scimgate-required": true`): it is then attached to those resource types as an extension, so a user adds
//! an extension by dropping a file, with no code change. The `x-` keys are stripped when the schema is served.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::filter::AttrPath;

/// URN of the core User schema.
pub const USER_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
/// URN of the core Group schema.
pub const GROUP_URN: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
/// URN of the enterprise User extension.
pub const ENTERPRISE_URN: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrType {
    #[serde(rename = "string")]
    String,
    #[serde(rename = "boolean")]
    Boolean,
    #[serde(rename = "decimal")]
    Decimal,
    #[serde(rename = "integer")]
    Integer,
    #[serde(rename = "dateTime")]
    DateTime,
    #[serde(rename = "reference")]
    Reference,
    #[serde(rename = "complex")]
    Complex,
    #[serde(rename = "binary")]
    Binary,
}

impl AttrType {
    /// Whether `co`, `sw` and `ew` apply, and string comparison rules.
    pub fn is_stringy(self) -> bool {
        matches!(self, AttrType::String | AttrType::Reference | AttrType::Binary)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Mutability {
    ReadOnly,
    #[default]
    ReadWrite,
    Immutable,
    WriteOnly,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Returned {
    Always,
    Never,
    #[default]
    Default,
    Request,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Uniqueness {
    #[default]
    None,
    Server,
    Global,
}

/// One attribute definition (RFC 7643 §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attribute {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: AttrType,
    #[serde(default)]
    pub multi_valued: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canonical_values: Option<Vec<String>>,
    #[serde(default)]
    pub case_exact: bool,
    #[serde(default)]
    pub mutability: Mutability,
    #[serde(default)]
    pub returned: Returned,
    #[serde(default)]
    pub uniqueness: Uniqueness,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sub_attributes: Vec<Attribute>,
}

impl Attribute {
    pub fn sub(&self, name: &str) -> Option<&Attribute> {
        self.sub_attributes.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }

    fn simple(name: &str, kind: AttrType, mutability: Mutability, returned: Returned) -> Self {
        Attribute {
            name: name.to_string(),
            kind,
            multi_valued: false,
            description: None,
            required: false,
            canonical_values: None,
            case_exact: false,
            mutability,
            returned,
            uniqueness: Uniqueness::None,
            reference_types: None,
            sub_attributes: Vec::new(),
        }
    }
}

/// A schema (RFC 7643 §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Schema {
    pub id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub attributes: Vec<Attribute>,
}

impl Schema {
    pub fn attr(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name.eq_ignore_ascii_case(name))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SchemaExtension {
    pub schema: String,
    #[serde(default)]
    pub required: bool,
}

/// A resource type definition (RFC 7643 §6).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceTypeDef {
    pub id: String,
    pub name: String,
    pub endpoint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub schema: String,
    #[serde(default)]
    pub schema_extensions: Vec<SchemaExtension>,
}

/// The two resource kinds the store keeps in tables of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResourceKind {
    User,
    Group,
}

impl ResourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::User => "User",
            ResourceKind::Group => "Group",
        }
    }
    pub fn endpoint(self) -> &'static str {
        match self {
            ResourceKind::User => "Users",
            ResourceKind::Group => "Groups",
        }
    }
    pub fn core_urn(self) -> &'static str {
        match self {
            ResourceKind::User => USER_URN,
            ResourceKind::Group => GROUP_URN,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{source_name}: {msg}")]
    Invalid { source_name: String, msg: String },
}

fn invalid(source_name: &str, msg: impl Into<String>) -> SchemaError {
    SchemaError::Invalid {
        source_name: source_name.to_string(),
        msg: msg.into(),
    }
}

/// Where a resolved attribute lives in a canonical resource document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Home<'r> {
    /// `id`, `externalId`, `meta`: top level, in no schema.
    Common,
    /// A core-schema attribute: top level.
    Core,
    /// An extension attribute: inside the object keyed by the extension URN.
    Extension(&'r str),
}

/// An attribute path resolved against a resource type: canonical names plus the definitions.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'r> {
    pub home: Home<'r>,
    pub attr: &'r Attribute,
    pub sub: Option<&'r Attribute>,
}

impl<'r> Resolved<'r> {
    /// The definition that values are compared against (the sub-attribute if there is one).
    pub fn leaf(&self) -> &'r Attribute {
        self.sub.unwrap_or(self.attr)
    }

    /// The canonical AttrPath (URN only for extensions).
    pub fn to_path(&self) -> AttrPath {
        AttrPath {
            urn: match self.home {
                Home::Extension(u) => Some(u.to_string()),
                _ => None,
            },
            attr: self.attr.name.clone(),
            sub: self.sub.map(|s| s.name.clone()),
        }
    }
}

/// What a path names in a resource type.
#[derive(Debug, Clone, Copy)]
pub enum Target<'r> {
    Attr(Resolved<'r>),
    /// A whole extension object, e.g. a PATCH value keyed by the enterprise URN.
    Extension(&'r Schema),
}

/// A resource type with its schemas attached.
#[derive(Debug, Clone)]
pub struct ResourceType {
    pub def: ResourceTypeDef,
    pub kind: ResourceKind,
    pub core: Schema,
    /// Extensions with whether each is required.
    pub extensions: Vec<(Schema, bool)>,
}

impl ResourceType {
    pub fn extension(&self, urn: &str) -> Option<&Schema> {
        self.extensions
            .iter()
            .map(|(s, _)| s)
            .find(|s| s.id.eq_ignore_ascii_case(urn))
    }

    /// Resolve `path` (names matched case-insensitively). `None` if it names nothing.
    pub fn resolve<'r>(&'r self, common: &'r [Attribute], path: &AttrPath) -> Option<Target<'r>> {
        let (home, schema) = match &path.urn {
            Some(urn) if urn.eq_ignore_ascii_case(&self.core.id) => (Home::Core, Some(&self.core)),
            Some(urn) => {
                // `urn:...:enterprise:2.0:User` alone parses as urn `...:2.0` + attr `User`.
                let whole = format!("{urn}:{}", path.attr);
                if path.sub.is_none()
                    && let Some(ext) = self.extension(&whole)
                {
                    return Some(Target::Extension(ext));
                }
                let ext = self.extension(urn)?;
                (Home::Extension(ext.id.as_str()), Some(ext))
            }
            None => (Home::Core, None),
        };
        let (home, attr) = match schema {
            Some(s) => (home, s.attr(&path.attr)?),
            None => match common.iter().find(|a| a.name.eq_ignore_ascii_case(&path.attr)) {
                Some(a) => (Home::Common, a),
                None => match self.core.attr(&path.attr) {
                    Some(a) => (Home::Core, a),
                    // RFC 7644 §3.10: an unqualified name may stand for an extension attribute when exactly one
                    // extension has it (Entra's `manager`).
                    None => {
                        let mut hits = self
                            .extensions
                            .iter()
                            .filter_map(|(s, _)| s.attr(&path.attr).map(|a| (s.id.as_str(), a)));
                        let (urn, a) = hits.next()?;
                        if hits.next().is_some() {
                            return None;
                        }
                        (Home::Extension(urn), a)
                    }
                },
            },
        };
        let sub = match &path.sub {
            Some(s) => Some(attr.sub(s)?),
            None => None,
        };
        Some(Target::Attr(Resolved { home, attr, sub }))
    }

    /// All schema URNs of this type: core first.
    pub fn urns(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.core.id.as_str()).chain(self.extensions.iter().map(|(s, _)| s.id.as_str()))
    }
}

/// All loaded schemas and resource types.
#[derive(Debug, Clone)]
pub struct Registry {
    schemas: Vec<Schema>,
    types: Vec<ResourceType>,
    common: Vec<Attribute>,
}

/// One schema document as read from disk, with its source name for error messages.
pub struct SchemaDoc {
    pub source: String,
    pub json: Value,
}

impl Registry {
    /// Build the registry from schema documents and the resource-type list.
    pub fn build(docs: Vec<SchemaDoc>, resource_types: &SchemaDoc) -> Result<Registry, SchemaError> {
        let mut schemas: Vec<Schema> = Vec::new();
        let mut extends: Vec<(String, Vec<String>, bool)> = Vec::new();
        for doc in docs {
            let mut json = doc.json;
            let obj = json
                .as_object_mut()
                .ok_or_else(|| invalid(&doc.source, "a schema file must hold one JSON object"))?;
            let ext_of = obj.remove("x-scimgate-extends");
            let required = obj.remove("x-scimgate-required");
            obj.remove("schemas");
            obj.remove("meta");
            let schema: Schema = serde_json::from_value(json).map_err(|e| invalid(&doc.source, e.to_string()))?;
            validate_schema(&doc.source, &schema)?;
            if schemas.iter().any(|s| s.id.eq_ignore_ascii_case(&schema.id)) {
                return Err(invalid(&doc.source, format!("schema {} is defined twice", schema.id)));
            }
            if let Some(ext_of) = ext_of {
                let list: Vec<String> = serde_json::from_value(ext_of)
                    .map_err(|_| invalid(&doc.source, "x-scimgate-extends must be a list of resource type ids"))?;
                let required = match required {
                    None => false,
                    Some(Value::Bool(b)) => b,
                    Some(_) => {
                        return Err(invalid(&doc.source, "x-scimgate-required must be a boolean"));
                    }
                };
                extends.push((schema.id.clone(), list, required));
            }
            schemas.push(schema);
        }
        let defs: Vec<ResourceTypeDef> = serde_json::from_value(resource_types.json.clone())
            .map_err(|e| invalid(&resource_types.source, e.to_string()))?;
        let find = |urn: &str, src: &str| -> Result<Schema, SchemaError> {
            schemas
                .iter()
                .find(|s| s.id.eq_ignore_ascii_case(urn))
                .cloned()
                .ok_or_else(|| invalid(src, format!("schema {urn} is not loaded")))
        };
        let mut types = Vec::new();
        for mut def in defs {
            let kind = match def.id.as_str() {
                "User" => ResourceKind::User,
                "Group" => ResourceKind::Group,
                other => {
                    return Err(invalid(
                        &resource_types.source,
                        format!("resource type {other}: only User and Group are supported"),
                    ));
                }
            };
            if !def.schema.eq_ignore_ascii_case(kind.core_urn()) {
                return Err(invalid(
                    &resource_types.source,
                    format!("resource type {} must use core schema {}", def.id, kind.core_urn()),
                ));
            }
            for (urn, list, required) in &extends {
                if list.iter().any(|t| t == &def.id)
                    && !def.schema_extensions.iter().any(|e| e.schema.eq_ignore_ascii_case(urn))
                {
                    def.schema_extensions.push(SchemaExtension {
                        schema: urn.clone(),
                        required: *required,
                    });
                }
            }
            let core = find(&def.schema, &resource_types.source)?;
            let mut extensions = Vec::new();
            for e in &def.schema_extensions {
                extensions.push((find(&e.schema, &resource_types.source)?, e.required));
            }
            types.push(ResourceType {
                def,
                kind,
                core,
                extensions,
            });
        }
        for kind in [ResourceKind::User, ResourceKind::Group] {
            if !types.iter().any(|t| t.kind == kind) {
                return Err(invalid(
                    &resource_types.source,
                    format!("resource type {} is missing", kind.as_str()),
                ));
            }
        }
        for (urn, list, _) in &extends {
            for t in list {
                if !types.iter().any(|rt| &rt.def.id == t) {
                    return Err(invalid(
                        urn,
                        format!("x-scimgate-extends names unknown resource type {t}"),
                    ));
                }
            }
        }
        Ok(Registry {
            schemas,
            types,
            common: common_attributes(),
        })
    }

    pub fn schemas(&self) -> &[Schema] {
        &self.schemas
    }

    pub fn schema(&self, urn: &str) -> Option<&Schema> {
        self.schemas.iter().find(|s| s.id.eq_ignore_ascii_case(urn))
    }

    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    pub fn rt(&self, kind: ResourceKind) -> &ResourceType {
        // build() guarantees both kinds exist.
        match self.types.iter().find(|t| t.kind == kind) {
            Some(t) => t,
            None => unreachable!("registry built without {kind:?}"),
        }
    }

    pub fn common(&self) -> &[Attribute] {
        &self.common
    }

    pub fn resolve(&self, kind: ResourceKind, path: &AttrPath) -> Option<Target<'_>> {
        self.rt(kind).resolve(&self.common, path)
    }
}

fn validate_schema(src: &str, s: &Schema) -> Result<(), SchemaError> {
    if !s.id.contains(':') {
        return Err(invalid(src, format!("schema id {:?} is not a URN", s.id)));
    }
    let mut seen = HashMap::new();
    for a in &s.attributes {
        check_attr(src, a, false)?;
        if seen.insert(a.name.to_ascii_lowercase(), ()).is_some() {
            return Err(invalid(src, format!("attribute {} is defined twice", a.name)));
        }
    }
    Ok(())
}

fn check_attr(src: &str, a: &Attribute, nested: bool) -> Result<(), SchemaError> {
    let mut chars = a.name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '$');
    if !ok {
        return Err(invalid(src, format!("attribute name {:?} is not valid", a.name)));
    }
    match (a.kind, a.sub_attributes.is_empty()) {
        (AttrType::Complex, true) => {
            return Err(invalid(
                src,
                format!("complex attribute {} has no subAttributes", a.name),
            ));
        }
        (AttrType::Complex, false) if nested => {
            return Err(invalid(
                src,
                format!("complex attribute {} is nested in a complex attribute", a.name),
            ));
        }
        (k, false) if k != AttrType::Complex => {
            return Err(invalid(
                src,
                format!("attribute {} has subAttributes but is not complex", a.name),
            ));
        }
        _ => {}
    }
    for sub in &a.sub_attributes {
        check_attr(src, sub, true)?;
    }
    Ok(())
}

/// `id`, `externalId` and `meta` (RFC 7643 §3.1): common to every resource, in no schema.
fn common_attributes() -> Vec<Attribute> {
    use AttrType::*;
    use Mutability::*;
    let mut id = Attribute::simple("id", String, ReadOnly, Returned::Always);
    id.case_exact = true;
    id.uniqueness = Uniqueness::Server;
    let mut external = Attribute::simple("externalId", String, ReadWrite, Returned::Default);
    external.case_exact = true;
    let mut meta = Attribute::simple("meta", Complex, ReadOnly, Returned::Default);
    let mut version = Attribute::simple("version", String, ReadOnly, Returned::Default);
    version.case_exact = true;
    let mut location = Attribute::simple("location", Reference, ReadOnly, Returned::Default);
    location.case_exact = true;
    meta.sub_attributes = vec![
        Attribute::simple("resourceType", String, ReadOnly, Returned::Default),
        Attribute::simple("created", DateTime, ReadOnly, Returned::Default),
        Attribute::simple("lastModified", DateTime, ReadOnly, Returned::Default),
        location,
        version,
    ];
    vec![id, external, meta]
}
