//! "Did you mean" hints for names typed by people.

/// Names longer than this get no hint: nobody mistypes a known name that way,
/// and the edit distance costs the product of the two lengths.
const LONGEST_TYPO: usize = 64;

/// The known name closest to `input`, if it is close enough to be a likely typo.
pub fn nearest<'a>(input: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    if input.len() > LONGEST_TYPO {
        return None;
    }
    let input_lower = input.to_ascii_lowercase();
    let input_chars = input.chars().count();
    known
        .into_iter()
        .filter_map(|k| {
            let most = (k.len().max(input.len()) / 2).max(1);
            // The distance is at least the difference in length: a name
            // that far off is not computed.
            if input_chars.abs_diff(k.chars().count()) > most {
                return None;
            }
            // Optimal string alignment: edits and swaps of neighbours, each
            // letter edited once (the typos people make), without the
            // unrestricted distance's table per call.
            let d = strsim::osa_distance(&input_lower, &k.to_ascii_lowercase());
            (d <= most).then_some((k, d))
        })
        .min_by_key(|(_, d)| *d)
        .map(|(k, _)| k)
}

/// Formats a hint suffix such as `"; did you mean `amount`?"`, or an empty string.
pub fn hint<'a>(input: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    match nearest(input, known) {
        Some(k) => format!("; did you mean `{k}`?"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_close_names_only() {
        let known = ["amount", "currency", "card_id"];
        assert_eq!(nearest("ammount", known), Some("amount"));
        assert_eq!(nearest("card_di", known), Some("card_id"));
        assert_eq!(nearest("zebra", known), None);
        assert_eq!(nearest(&"amount".repeat(20), known), None);
    }
}
