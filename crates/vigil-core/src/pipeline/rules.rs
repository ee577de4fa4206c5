//! `[rules]`: where the rule files are.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::Diagnostics;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRules {
    path: Spanned<String>,
}

/// The rule file or folder, resolved against the config file's folder.
pub(super) fn validate(raw: &RawRules, p: &mut Diagnostics<'_>, resolve: &dyn Fn(&str) -> PathBuf) -> PathBuf {
    let path = raw.path.get_ref();
    if path.trim().is_empty() {
        p.on(&raw.path, "rules.path", "must not be empty");
    }
    resolve(path)
}
