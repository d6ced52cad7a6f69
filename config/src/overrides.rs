//! `SCOREGRID_SECTION_KEY` environment overrides. The set of valid variables is derived from
//! the defaults (every key of every section), so a new key gets its variable for free and a
//! misspelt variable is refused instead of ignored.

use crate::{Config, ConfigError};

const PREFIX: &str = "SCOREGRID_";

/// Variables that start with the prefix but are not configuration keys (used by the CLI).
const NOT_KEYS: &[&str] = &["SCOREGRID_CONFIG", "SCOREGRID_LOG"];

pub(crate) fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = match toml::Table::try_from(Config::default()) {
        Ok(t) => t,
        Err(e) => {
            return Err(ConfigError::Parse {
                origin: "defaults".into(),
                message: e.to_string(),
            });
        }
    };
    for (name, value) in env {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        if NOT_KEYS.contains(&name.as_str()) {
            continue;
        }
        let found = defaults.iter().find_map(|(section, keys)| {
            let keys = keys.as_table()?;
            let key_part = rest
                .strip_prefix(&section.to_uppercase())?
                .strip_prefix('_')?;
            keys.iter()
                .find(|(key, _)| key.to_uppercase() == key_part)
                .map(|(key, default)| (section.clone(), key.clone(), default.clone()))
        });
        let Some((section, key, default)) = found else {
            return Err(ConfigError::Env {
                name,
                message: "not a configuration key (see `scoregrid config` for every key)".into(),
            });
        };
        let parsed =
            parse_like(&section, &key, &default, &value).map_err(|message| ConfigError::Env {
                name: name.clone(),
                message,
            })?;
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry.as_table_mut() {
            Some(t) => {
                t.insert(key, parsed);
            }
            None => {
                return Err(ConfigError::Env {
                    name,
                    message: format!("`{section}` in the file is not a table"),
                });
            }
        }
    }
    Ok(())
}

/// Parses an environment string as the same TOML type as the key's default. Lists of numbers
/// (`raft.voters`) are written comma-separated: `SCOREGRID_RAFT_VOTERS=1,2,3`.
fn parse_like(
    section: &str,
    key: &str,
    default: &toml::Value,
    value: &str,
) -> Result<toml::Value, String> {
    let bad = |kind: &str| format!("expected {kind}, got {value:?}");
    Ok(match default {
        toml::Value::Array(_) if (section, key) != ("cluster", "nodes") => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(|item| {
                    item.parse::<i64>()
                        .map(toml::Value::Integer)
                        .map_err(|_| bad("a comma-separated list of integers"))
                })
                .collect::<Result<_, _>>()?,
        ),
        toml::Value::String(_) => toml::Value::String(value.to_string()),
        toml::Value::Integer(_) => {
            toml::Value::Integer(value.trim().parse().map_err(|_| bad("an integer"))?)
        }
        toml::Value::Float(_) => {
            toml::Value::Float(value.trim().parse().map_err(|_| bad("a number"))?)
        }
        toml::Value::Boolean(_) => {
            toml::Value::Boolean(value.trim().parse().map_err(|_| bad("true or false"))?)
        }
        other => {
            return Err(format!(
                "cannot be set from the environment (a {})",
                other.type_str()
            ));
        }
    })
}
