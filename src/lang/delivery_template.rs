//! The names `{{ ... }}` may use in a trigger's parameters — the webhook delivery's
//! `payload.x.y` (array elements by index), `event`, `action`, `branch`, `delivery`,
//! `trigger` — and the check validation runs on such a parameter. They sit here, below the
//! schema layer that validates with them; the values come from the delivery
//! (`triggers::template`).

use super::template;

/// The names a reference may start with.
pub const ROOTS: &[&str] = &[
    "payload", "event", "action", "branch", "delivery", "trigger",
];

/// Checks the references of a parameter value: every `{{` closed, every reference starting
/// with one of [`ROOTS`] and without an empty segment.
pub fn check(text: &str) -> Result<(), String> {
    for reference in template::closed_references(text)? {
        check_reference(text, reference)?;
    }
    Ok(())
}

fn check_reference(text: &str, reference: &str) -> Result<(), String> {
    let root = reference.split('.').next().unwrap_or_default();
    if reference.is_empty() {
        return Err(format!("empty reference `{{{{ }}}}` in `{text}`"));
    }
    if !ROOTS.contains(&root) {
        return Err(format!(
            "unknown reference `{reference}`: expected payload.<field>, {}{}",
            ROOTS[1..].join(", "),
            template::root_hint(root, ROOTS.iter().copied())
        ));
    }
    if reference.split('.').any(str::is_empty) {
        return Err(format!("`{reference}` has an empty segment"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn references_are_checked_against_the_delivery_names() {
        let cases: [(&str, Result<(), &str>); 8] = [
            ("{{ payload.after }}-{{ delivery }}", Ok(())),
            ("no references", Ok(())),
            ("{{ payload.commits.0.id }}", Ok(())),
            ("{{ payload.ref", Err("unclosed `{{` in `{{ payload.ref`")),
            ("{{ }}", Err("empty reference `{{ }}` in `{{ }}`")),
            ("{{ payload..x }}", Err("`payload..x` has an empty segment")),
            (
                "{{ params.x }}",
                Err("unknown reference `params.x`: expected payload.<field>, event, action, branch, delivery, trigger"),
            ),
            (
                "{{ paylod.x }}",
                Err("unknown reference `paylod.x`: expected payload.<field>, event, action, branch, delivery, trigger; did you mean `payload`?"),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(check(text), expected.map_err(str::to_owned), "`{text}`");
        }
    }
}
