//! Every kind of policy error names its key path and its line:column.

use super::policy_text;
use crate::{Policy, PolicyError};

/// 1-based line:column of the `nth` (0-based) occurrence of `needle` in `text`, plus `shift` characters.
fn pos(text: &str, needle: &str, nth: usize, shift: usize) -> String {
    let (offset, _) = text
        .match_indices(needle)
        .nth(nth)
        .unwrap_or_else(|| panic!("{needle:?} not in the text"));
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + shift + 1;
    format!("{line}:{column}")
}

fn err(text: &str) -> PolicyError {
    match Policy::parse(text, "policy.toml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the error's display names the file, the place and the path, and contains `message`.
fn assert_err(e: &PolicyError, at: &str, path: &str, message: &str) {
    let shown = e.to_string();
    let (line, column) = e.line_column();
    assert_eq!(format!("{line}:{column}"), at, "{shown}");
    assert!(shown.starts_with(&format!("policy.toml:{at}: ")), "{shown}");
    assert_eq!(e.path(), path, "{shown}");
    assert!(shown.contains(&format!("{path}: ")) || path.is_empty(), "{shown}");
    assert!(shown.contains(message), "{shown} does not contain {message:?}");
}

/// The test policy with `from` replaced by `to` (which must occur).
fn edited(from: &str, to: &str) -> String {
    let text = policy_text("enforce");
    assert!(text.contains(from), "{from:?}");
    text.replacen(from, to, 1)
}

#[test]
fn toml_syntax_error_has_line_and_column() {
    let text = "version = 1\nmode = \"enforce\n";
    let e = err(text);
    assert!(matches!(e, PolicyError::Syntax { .. }), "{e:?}");
    assert_eq!(e.line_column().0, 2, "{e}");
    assert!(e.to_string().starts_with("policy.toml:2:"), "{e}");
    assert!(!e.to_string().contains('\n'), "{e}");
}

#[test]
fn toml_type_error_names_the_key() {
    let text = edited(
        "id = \"sales\"\nwhen = 'has(",
        "id = \"sales\"\nwhen = 42\nwhere = 'has(",
    );
    let e = err(&text);
    assert!(matches!(e, PolicyError::Schema { .. }), "{e:?}");
    assert_err(
        &e,
        &pos(&text, "42", 0, 0),
        "rules[1].when",
        "invalid type: integer `42`, expected a string",
    );
}

#[test]
fn unknown_key_is_refused() {
    let text = edited("privileged = true\n", "privileged = true\nprivilege = true\n");
    let e = err(&text);
    assert!(matches!(e, PolicyError::Schema { .. }), "{e:?}");
    assert_err(
        &e,
        &pos(&text, "privilege = true", 0, 0),
        "entitlements[3].privilege",
        "unknown field `privilege`",
    );
}

#[test]
fn bad_enum_value_names_the_key() {
    let text = edited("mode = \"record\"", "mode = \"shout\"");
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "\"shout\"", 0, 0),
        "sod[1].mode",
        "unknown variant `shout`",
    );
    let text = edited(
        "approvers = { kind = \"app_owner\" }",
        "approvers = { kind = \"owner\" }",
    );
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "kind = \"owner\"", 0, 7),
        "tiers.medium.stages[1].approvers.kind",
        "unknown variant",
    );
}

#[test]
fn missing_version_and_wrong_version() {
    let e = err("mode = \"shadow\"\n");
    assert!(matches!(e, PolicyError::Schema { .. }), "{e:?}");
    assert!(e.to_string().contains("missing field `version`"), "{e}");
    let text = edited("version = 1", "version = 2");
    let e = err(&text);
    assert!(matches!(e, PolicyError::Invalid { .. }), "{e:?}");
    assert_err(&e, &pos(&text, "2\n", 0, 0), "version", "unsupported policy version 2");
}

#[test]
fn unknown_entitlement_in_role() {
    let text = edited(
        "grants = [\"ldap:sales\", \"erp:report\"]",
        "grants = [\"ldap:sales\", \"erp:reprot\"]",
    );
    let e = err(&text);
    assert!(matches!(e, PolicyError::UnknownReference { .. }), "{e:?}");
    assert_err(
        &e,
        &pos(&text, "\"erp:reprot\"", 0, 0),
        "roles[id=sales].grants[1]",
        "unknown entitlement 'erp:reprot'",
    );
}

#[test]
fn unknown_role_in_rule_and_in_group_mapping() {
    let text = edited(
        "roles = [\"dba\", \"engineering\"]",
        "roles = [\"dba\", \"enginering\"]",
    );
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "\"enginering\"", 0, 0),
        "rules[id=dba].roles[1]",
        "unknown role 'enginering'",
    );
    let text = edited(
        "group = \"Admins\"\nroles = [\"admin\"]",
        "group = \"Admins\"\nroles = [\"admins\"]",
    );
    let e = err(&text);
    assert!(matches!(e, PolicyError::UnknownReference { .. }), "{e:?}");
    assert_err(
        &e,
        &pos(&text, "\"admins\"", 0, 0),
        "group_mappings[0].roles[0]",
        "unknown role 'admins'",
    );
}

#[test]
fn unknown_target_and_unknown_tier() {
    let text = edited(
        "target = \"db\"\nvalue = \"reader\"",
        "target = \"dbs\"\nvalue = \"reader\"",
    );
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "\"dbs\"", 0, 0),
        "entitlements[id=db:read].target",
        "unknown target 'dbs'",
    );
    let text = edited(
        "value = \"REPORT\"\nrisk = \"low\"",
        "value = \"REPORT\"\nrisk = \"lowest\"",
    );
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "\"lowest\"", 0, 0),
        "entitlements[id=erp:report].risk",
        "unknown tier 'lowest'",
    );
    let text = edited("version = 1\n", "version = 1\nsod_approval_tier = \"security\"\n");
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "\"security\"", 0, 0),
        "sod_approval_tier",
        "unknown tier 'security'",
    );
}

#[test]
fn duplicate_ids() {
    for (from, to, needle, first, nth, path) in [
        (
            "id = \"analyst\"",
            "id = \"admin\"",
            "id = \"admin\"",
            0,
            1,
            "roles[9].id",
        ),
        (
            "id = \"db:owner\"",
            "id = \"db:read\"",
            "id = \"db:read\"",
            0,
            1,
            "entitlements[10].id",
        ),
        ("id = \"analysts\"", "id = \"dba\"", "id = \"dba\"", 1, 2, "rules[8].id"),
        ("id = \"db\"", "id = \"erp\"", "id = \"erp\"", 0, 1, "targets[2].id"),
        (
            "id = \"gl\"\nconflicts",
            "id = \"ap-pay\"\nconflicts",
            "id = \"ap-pay\"",
            0,
            1,
            "sod[1].id",
        ),
    ] {
        let text = edited(from, to);
        let e = err(&text);
        assert!(matches!(e, PolicyError::Duplicate { .. }), "{e:?}");
        let first = pos(&text, needle, first, 5);
        assert_err(
            &e,
            &pos(&text, needle, nth, 5),
            path,
            &format!("(first defined at {first})"),
        );
    }
    let text = edited("group = \"Payment Approvers\"", "group = \"Admins\"");
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "\"Admins\"", 1, 0),
        "group_mappings[1].group",
        "already mapped",
    );
}

#[test]
fn cel_that_does_not_compile_points_into_the_expression() {
    let text = edited("workforce.jobCode == \"GL\"'", "workforce.jobCode == \"GL\" &&'");
    let e = err(&text);
    assert!(matches!(e, PolicyError::Cel { .. }), "{e:?}");
    // The error is at the end of the expression, just before the closing quote.
    assert_err(&e, &pos(&text, "&&'", 0, 2), "rules[id=gl].when", "CEL: Syntax error");
}

#[test]
fn cel_with_unknown_variable_names_it() {
    let text = edited(
        "has(enterprise.department) && enterprise.department == \"Sales\"",
        "departmnt == \"Sales\"",
    );
    let e = err(&text);
    assert!(matches!(e, PolicyError::Cel { .. }), "{e:?}");
    let at = pos(&text, "departmnt", 0, 0);
    assert_err(&e, &at, "rules[id=sales].when", "undeclared reference to 'departmnt'");
    assert!(e.to_string().starts_with(&format!(
        "policy.toml:{at}: rules[id=sales].when: undeclared reference to"
    )));
    // Comprehension variables, type names and function namespaces are not variables.
    let ok = edited(
        "has(enterprise.department) && enterprise.department == \"Sales\"",
        "groups.exists(g, g.startsWith(\"Sales\")) && type(user) == map && math.greatest(1, 2) == 2",
    );
    Policy::parse(&ok, "policy.toml").unwrap();
    let bad = edited(
        "has(enterprise.department) && enterprise.department == \"Sales\"",
        "groups.exists(g, h == 1)",
    );
    let e = err(&bad);
    assert_err(
        &e,
        &pos(&bad, "h == 1", 0, 0),
        "rules[id=sales].when",
        "undeclared reference to 'h'",
    );
}

#[test]
fn cel_in_a_multiline_literal_string_is_placed() {
    let text = edited(
        "when = 'has(workforce.jobCode) && workforce.jobCode == \"CTRL\"'",
        "when = '''\nhas(workforce.jobCode)\n  && workforce.jobcode == \"CTRL\" && bogus\n'''",
    );
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "bogus", 0, 0),
        "rules[id=controller].when",
        "undeclared reference to 'bogus'",
    );
}

#[test]
fn lifecycle_condition_errors() {
    let text = edited(
        "[lifecycle]\n",
        "[lifecycle]\nleave_condition = 'workforce.status == '\n",
    );
    let e = err(&text);
    assert!(matches!(e, PolicyError::Cel { .. }), "{e:?}");
    assert_eq!(e.path(), "lifecycle.leave_condition");
    assert_eq!(
        e.line_column().0,
        pos(&text, "leave_condition", 0, 0)
            .split(':')
            .next()
            .unwrap()
            .parse::<usize>()
            .unwrap()
    );
    let text = edited(
        "[lifecycle]\n",
        "[lifecycle]\ncontractor_condition = 'worker.type == \"c\"'\n",
    );
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "worker.type", 0, 0),
        "lifecycle.contractor_condition",
        "undeclared reference to 'worker'",
    );
    let text = edited("lock_delay_minutes = 0", "lock_delay_minutes = 2000");
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "2000", 0, 0),
        "lifecycle.lock_delay_minutes",
        "must not come after the revoke",
    );
    let text = edited("prestart_lead_days = 7", "prestart_lead_days = -1");
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "-1", 0, 0),
        "lifecycle.prestart_lead_days",
        "must be between 0 and 3650",
    );
}

#[test]
fn sod_with_fewer_than_two_sets_or_unknown_entitlement() {
    let text = edited(
        "conflicts = [[\"erp:gl-post\"], [\"erp:gl-approve\"]]",
        "conflicts = [[\"erp:gl-post\", \"erp:gl-approve\"]]",
    );
    let e = err(&text);
    assert!(matches!(e, PolicyError::Invalid { .. }), "{e:?}");
    assert_err(
        &e,
        &pos(&text, "[[\"erp:gl-post\"", 0, 0),
        "sod[id=gl].conflicts",
        "needs at least 2 entitlement sets",
    );
    let text = edited("[\"erp:gl-approve\"]]", "[\"erp:gl-aprove\"]]");
    let e = err(&text);
    assert!(matches!(e, PolicyError::UnknownReference { .. }), "{e:?}");
    assert_err(
        &e,
        &pos(&text, "\"erp:gl-aprove\"", 0, 0),
        "sod[id=gl].conflicts[1][0]",
        "unknown entitlement",
    );
    let text = edited("[\"erp:gl-approve\"]]", "[\"erp:gl-approve\", \"erp:gl-post\"]]");
    let e = err(&text);
    assert!(e.to_string().contains("already in set 0"), "{e}");
}

#[test]
fn tier_errors() {
    let text = edited(
        "approvers = { kind = \"named\", names = [\"sec-1\", \"sec-2\"] }",
        "approvers = { kind = \"named\" }",
    );
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "{ kind = \"named\" }", 0, 9),
        "tiers.high.stages[id=security].approvers",
        "non-empty `names`",
    );
    let text = edited("expire_after_hours = 72", "expire_after_hours = 12");
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "12\n", 0, 0),
        "tiers.high.expire_after_hours",
        "expire (12 h) before it escalates (24 h)",
    );
    // A privileged entitlement needs the privileged tier.
    let text = policy_text("record")
        .replace("tiers.high", "tiers.top")
        .replace("\"high\"", "\"top\"");
    let e = err(&text);
    assert!(
        e.to_string().contains("privileged_tier: the default tier 'high'"),
        "{e}"
    );
}

#[test]
fn check_returns_every_error_in_file_order() {
    let text = edited(
        "grants = [\"ldap:eng\", \"db:read\"]",
        "grants = [\"ldap:engg\", \"db:reed\"]",
    );
    let text = text.replacen(
        "target = \"erp\"\nvalue = \"REPORT\"",
        "target = \"erpp\"\nvalue = \"REPORT\"",
        1,
    );
    let errors = Policy::check(&text, "policy.toml").unwrap_err();
    let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 3, "{shown:#?}");
    assert!(shown[0].contains("entitlements[id=erp:report].target"), "{shown:#?}");
    assert!(shown[1].contains("roles[id=engineering].grants[0]"), "{shown:#?}");
    assert!(shown[2].contains("roles[id=engineering].grants[1]"), "{shown:#?}");
    // parse() gives the first.
    assert_eq!(err(&text), errors[0]);
}

#[test]
fn implied_tables_and_dotted_keys_are_read() {
    // The form of the design notes: `[[tiers.high.stages]]` with no `[tiers.high]`, and dotted keys.
    let text = policy_text("enforce")
        .replace("[tiers.low]\n", "")
        .replace("[tiers.medium]\n", "")
        .replace(
            "[lifecycle]\nprestart_lead_days = 7\n",
            "lifecycle.prestart_lead_days = 5\n[lifecycle.unused]\n",
        )
        .replace("approvers = { kind = \"manager\" }", "approvers.kind = \"manager\"");
    let text = text.replace(
        "[lifecycle.unused]\nlock_delay_minutes = 0\nrevoke_delay_hours = 24\n",
        "",
    );
    let p = Policy::parse(&text, "policy.toml").unwrap();
    assert_eq!(p.tier("low").unwrap().stages[0].approvers, crate::Approvers::Manager);
    assert_eq!(p.tier("medium").unwrap().stages.len(), 2);
    assert_eq!(p.lifecycle().prestart_lead, chrono::Duration::days(5));
    // A tier with no stage is pointed at by its header.
    let text = format!("{text}\n[tiers.empty]\n");
    let e = err(&text);
    assert_err(
        &e,
        &pos(&text, "[tiers.empty]", 0, 0),
        "tiers.empty.stages",
        "at least one stage",
    );
}
