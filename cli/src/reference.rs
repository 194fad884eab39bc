//! Checks for a printed reference config (`--print-config`): that it names every key a config
//! has, and that its commented-out optional keys are real. Used by the daemons' tests.

/// Every leaf key of `table`, dotted (`training.teacher.hidden`).
pub fn leaf_keys(table: &toml::Table) -> Vec<String> {
    let mut out = Vec::new();
    collect(table, "", &mut out);
    out
}

fn collect(table: &toml::Table, prefix: &str, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = format!("{prefix}{k}");
        match v {
            toml::Value::Table(t) => collect(t, &format!("{key}."), out),
            _ => out.push(key),
        }
    }
}

/// Whether `reference` names the dotted `key`, set or commented out: as `leaf = ...`, or inside
/// an inline table `parent = { leaf = ... }`.
pub fn names(reference: &str, key: &str) -> bool {
    let mut parts = key.rsplit('.');
    let leaf = parts.next().unwrap_or(key);
    let parent = parts.next().unwrap_or(leaf);
    reference.lines().any(|l| {
        let l = l.trim_start_matches("# ").trim_start();
        l.starts_with(&format!("{leaf} ="))
            || (l.starts_with(&format!("{parent} = {{")) && l.contains(&format!("{leaf} =")))
    })
}

/// `reference` with its commented-out keys (`# key = value`) uncommented; comments that are
/// prose stay comments.
pub fn uncommented(reference: &str) -> String {
    reference
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(rest) if rest.split(' ').nth(1) == Some("=") => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "a = 1            # the a\n# b = 2          # optional\n\n[t]\n\
                        shape = { h = 8, w = 8 }\n# A prose comment = not a key\n";

    #[test]
    fn keys_are_found_set_commented_or_inline_and_only_keys_are_uncommented() {
        let table: toml::Table = toml::from_str(&uncommented(TEXT)).expect("parses");
        let mut keys = leaf_keys(&table);
        keys.sort();
        assert_eq!(keys, ["a", "b", "t.shape.h", "t.shape.w"]);
        for key in &keys {
            assert!(names(TEXT, key), "{key}");
        }
        assert!(!names(TEXT, "c"));
        assert!(!names(TEXT, "t.shape.d"));
        assert!(uncommented(TEXT).contains("# A prose comment"));
    }
}
