//! Unknown keys, all of them: a raw section refuses keys it does not know
//! (`deny_unknown_fields`), which stops the parse at the first. To report every
//! problem at once, each unknown key is noted (with its dotted path and the
//! nearest known key) and turned into a comment of the same length, and the
//! text is parsed again, so the other sections are still validated and every
//! place in the file keeps its line and column.

use serde::de::DeserializeOwned;

use crate::diagnostic::Diagnostics;

/// Most unknown keys noted before giving up on a file.
const MOST_UNKNOWN: usize = 50;

/// Parses `text` into `T`, noting every unknown key and any other parse
/// problem in `p`; `None` when the text does not parse as `T` even without
/// its unknown keys.
pub(super) fn read<T: DeserializeOwned>(text: &str, p: &mut Diagnostics<'_>) -> Option<T> {
    let mut current = text.to_owned();
    let mut unknown = 0;
    let mut doc: Option<Option<toml_edit::ImDocument<&str>>> = None;
    loop {
        let e = match toml::from_str::<T>(&current) {
            // Once the unknown keys are set aside the rest validates, but the
            // file is still refused for them (they are in `p`).
            Ok(raw) => return Some(raw),
            Err(e) => e,
        };
        let span = e.span().unwrap_or(0..0);
        let message = e.message().trim();
        // Set-aside keys become comments of the same length, so the places
        // of the original text's document hold for every later round: it is
        // parsed once.
        let doc = doc.get_or_insert_with(|| toml_edit::ImDocument::parse(text).ok()).as_ref();
        let Some(name) = message.strip_prefix("unknown field `").and_then(|m| m.split('`').next()) else {
            // Another problem (a missing key, a wrong type): where it is, and stop.
            let table = doc.map(|d| table_at(d.as_table(), &current, span.start)).unwrap_or_default();
            p.at(span.start, table, message.to_owned());
            return None;
        };
        let key = match doc.map(|d| table_at(d.as_table(), &current, span.start)) {
            Some(table) if !table.is_empty() => format!("{table}.{name}"),
            _ => name.to_owned(),
        };
        let known = expected(message);
        let hint = crate::suggest::hint(name, known.iter().map(String::as_str));
        p.at(span.start, key, format!("unknown field `{name}`{hint} (known here: {})", known.join(", ")));
        unknown += 1;
        let neutral = doc.and_then(|d| set_aside(&current, d.as_table(), span.start));
        match neutral {
            Some(next) if unknown < MOST_UNKNOWN => current = next,
            _ => return None,
        }
    }
}

/// The known names a serde "unknown field" message lists after "expected".
fn expected(message: &str) -> Vec<String> {
    let Some((_, listed)) = message.split_once("expected") else { return Vec::new() };
    listed.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// A table header's place and the dotted path of its table (`features[2]`,
/// `kafka.properties`), for every table of the document, in no order.
fn headers(table: &toml_edit::Table, path: &str, out: &mut Vec<(std::ops::Range<usize>, String)>) {
    let join = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    for (key, item) in table.iter() {
        match item {
            toml_edit::Item::Table(t) => {
                if let Some(span) = t.span() {
                    out.push((span, join(key)));
                }
                headers(t, &join(key), out);
            }
            toml_edit::Item::ArrayOfTables(tables) => {
                for (i, t) in tables.iter().enumerate() {
                    let here = format!("{}[{i}]", join(key));
                    if let Some(span) = t.span() {
                        out.push((span, here.clone()));
                    }
                    headers(t, &here, out);
                }
            }
            _ => {}
        }
    }
}

/// The dotted path of the table that holds byte `offset` of `text` (empty for
/// the top level): for a key in a header line (a table's name), the table
/// around that header; otherwise the one whose header comes last before it.
fn table_at(root: &toml_edit::Table, text: &str, offset: usize) -> String {
    let mut all = Vec::new();
    headers(root, "", &mut all);
    let same_line = |start: usize| start <= offset && text.get(start..offset).is_some_and(|t| !t.contains('\n'));
    if let Some((_, path)) = all.iter().find(|(span, _)| same_line(span.start)) {
        return path.rsplit_once('.').map_or_else(String::new, |(parent, _)| parent.to_owned());
    }
    let table = all.into_iter().filter(|(span, _)| span.start < offset).max_by_key(|(span, _)| span.start);
    table.map(|(_, path)| path).unwrap_or_default()
}

/// `text` with the key at `offset` (and its value, or the whole table it
/// heads) turned into comments of the same length; `None` where that cannot
/// be done in place (a key inside an inline table).
fn set_aside(text: &str, root: &toml_edit::Table, offset: usize) -> Option<String> {
    let end = extent(root, offset, text)?;
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let header_start = text[line_start..offset].trim_start_matches([' ', '\t', '[']).is_empty();
    if !header_start {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let (from, to) = (at, at + line.len());
        at = to;
        if to <= line_start || from >= end {
            out.push_str(line);
            continue;
        }
        // The line's first character that is not blank becomes `#`.
        match line.find(|c: char| !c.is_whitespace()) {
            Some(i) => {
                let c = line[i..].chars().next().unwrap_or(' ');
                out.push_str(&line[..i]);
                out.push('#');
                out.push_str(&" ".repeat(c.len_utf8() - 1));
                out.push_str(&line[i + c.len_utf8()..]);
            }
            None => out.push_str(line),
        }
    }
    Some(out)
}

/// Where what the key at `offset` holds ends: its value, or for a table
/// header, the table's last line (before the next header).
fn extent(root: &toml_edit::Table, offset: usize, text: &str) -> Option<usize> {
    fn find(table: &toml_edit::Table, offset: usize) -> Option<Option<usize>> {
        for (key, item) in table.iter() {
            let key_start = table.key(key).and_then(|k| k.span()).map(|s| s.start);
            if key_start == Some(offset) {
                // A value ends with its span; a table runs to the next header.
                return Some(match item {
                    toml_edit::Item::Value(v) => v.span().map(|s| s.end),
                    _ => None,
                });
            }
            let found = match item {
                toml_edit::Item::Table(t) => find(t, offset),
                toml_edit::Item::ArrayOfTables(tables) => tables.iter().find_map(|t| find(t, offset)),
                _ => None,
            };
            if found.is_some() {
                return found;
            }
        }
        None
    }
    match find(root, offset)? {
        Some(end) => Some(end),
        None => {
            let mut all = Vec::new();
            headers(root, "", &mut all);
            let next = all.into_iter().map(|(span, _)| span.start).filter(|s| *s > offset).min();
            Some(next.map_or(text.len(), |s| text[..s].rfind('\n').map_or(s, |i| i + 1)))
        }
    }
}
