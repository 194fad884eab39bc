//! `--set KEY=VALUE`: any key of a TOML config, given on the command line.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// `config` with each `KEY=VALUE` of `settings` applied: the key is a dotted path of the config
/// file's keys (`training.local_steps`), the value a TOML value (`500`, `[64, 32]`, `"shards"`;
/// a value that is not TOML is taken as a string, so `privacy.mode=shards` works). The result
/// is read back through the config's own deserialisation, so an unknown key (with
/// `deny_unknown_fields`) or a value of the wrong type is refused naming the key.
pub fn apply<T: Serialize + DeserializeOwned + Clone>(
    config: &T,
    settings: &[String],
) -> Result<T, String> {
    if settings.is_empty() {
        return Ok(config.clone());
    }
    let mut table = toml::Table::try_from(config).map_err(|e| e.to_string())?;
    for setting in settings {
        set_dotted(&mut table, setting)?;
    }
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| e.to_string())
}

/// Sets one `a.b.c=value` in `table`, creating tables on the way.
fn set_dotted(table: &mut toml::Table, setting: &str) -> Result<(), String> {
    let (key, text) = setting
        .split_once('=')
        .ok_or_else(|| format!("'{setting}' is not KEY=VALUE"))?;
    let key = key.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {text}")) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(text.into())),
        Err(_) => toml::Value::String(text.trim().to_owned()),
    };
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts
        .pop()
        .filter(|p| !p.is_empty())
        .ok_or_else(|| format!("'{setting}': empty key"))?;
    let mut here = table;
    for part in parts {
        here = here
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .ok_or_else(|| format!("'{key}': '{part}' is not a table of keys"))?;
    }
    here.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        steps: u32,
        mode: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Config {
        seed: u64,
        hidden: Vec<u32>,
        inner: Inner,
    }

    fn base() -> Config {
        Config {
            seed: 1,
            hidden: vec![8],
            inner: Inner {
                steps: 3,
                mode: "a".into(),
            },
        }
    }

    fn set(s: &[&str]) -> Result<Config, String> {
        apply(
            &base(),
            &s.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        )
    }

    #[test]
    fn nested_keys_arrays_and_bare_words_are_set() {
        let c = set(&[
            "inner.steps=500",
            "inner.mode=shards",
            "hidden=[64, 32]",
            "seed = 7",
        ])
        .expect("applies");
        assert_eq!(c.inner.steps, 500);
        assert_eq!(c.inner.mode, "shards");
        assert_eq!(c.hidden, [64, 32]);
        assert_eq!(c.seed, 7);
        assert_eq!(set(&[]).expect("nothing to do"), base());
    }

    #[test]
    fn unknown_keys_wrong_types_and_bad_syntax_are_refused_by_name() {
        let msg = set(&["inner.stepz=5"]).expect_err("unknown key");
        assert!(msg.contains("stepz"), "{msg}");
        let msg = set(&["inner.steps=many"]).expect_err("wrong type");
        assert!(msg.contains("steps"), "{msg}");
        assert!(
            set(&["no-equals-sign"])
                .expect_err("syntax")
                .contains("KEY=VALUE")
        );
        assert!(
            set(&["seed.x=1"])
                .expect_err("not a table")
                .contains("seed")
        );
        assert!(set(&["inner.=1"]).expect_err("empty").contains("empty key"));
    }
}
