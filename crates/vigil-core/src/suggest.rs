//! "Did you mean" hints for names typed by people.

/// The known name closest to `input`, if it is close enough to be a likely typo.
pub fn nearest<'a>(input: &str, known: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let input_lower = input.to_ascii_lowercase();
    known
        .into_iter()
        .map(|k| (k, strsim::damerau_levenshtein(&input_lower, &k.to_ascii_lowercase())))
        .filter(|(k, d)| *d <= (k.len().max(input.len()) / 2).max(1))
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
    }
}
