//! Small helpers every layer may use; they import nothing else of the crate.

/// The candidate closest to `word`, for "did you mean" hints: the one at the smallest
/// Levenshtein distance (counted in characters), when that distance is at most 2 or a third
/// of the shorter word's length, whichever is larger; the first of equally close ones.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|candidate| (strsim::levenshtein(word, candidate), candidate))
        .filter(|(distance, candidate)| {
            *distance <= 2.max(word.chars().count().min(candidate.chars().count()) / 3)
        })
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, candidate)| candidate)
}

/// `text` cut to at most `max_chars` characters, the last of them `…` when it was cut.
pub fn clip(text: &str, max_chars: usize) -> String {
    if text.chars().count() <= max_chars {
        text.to_owned()
    } else {
        let mut clipped: String = text.chars().take(max_chars.saturating_sub(1)).collect();
        clipped.push('…');
        clipped
    }
}

/// What an HTTP answer outside 2xx says, for a sender that retries: "`who` answered HTTP
/// 503: <the first 200 characters of its body (read up to 64 KiB)>", and whether to try
/// again (5xx, 408, 429).
pub fn http_failure(response: &mut ureq::http::Response<ureq::Body>, who: &str) -> (String, bool) {
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .read_to_string()
        .unwrap_or_default();
    let text = clip(body.trim(), 200);
    let message = if text.is_empty() {
        format!("{who} answered HTTP {status}")
    } else {
        format!("{who} answered HTTP {status}: {text}")
    };
    (message, status >= 500 || status == 408 || status == 429)
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn the_closest_candidate_within_the_allowed_distance_is_suggested() {
        let fields = ["timeout", "depends_on", "retries", "retry_delay"];
        assert_eq!(did_you_mean("timout", fields), Some("timeout"));
        assert_eq!(did_you_mean("depend_on", fields), Some("depends_on"));
        assert_eq!(did_you_mean("retry_delays", fields), Some("retry_delay"));
        // Too far from everything: no guess.
        assert_eq!(did_you_mean("colour", fields), None);
        assert_eq!(did_you_mean("anything", []), None);
    }

    #[test]
    fn distance_counts_characters_and_long_words_allow_more_edits() {
        // Two characters of a multi-byte script are two edits, not six bytes.
        assert_eq!(did_you_mean("ÿÿx", ["ÿÿÿÿx"]), Some("ÿÿÿÿx"));
        // A 12-character word may be 4 edits away (a third of its length).
        assert_eq!(
            did_you_mean("wf_api-tests", ["wf_api-test-suite"]),
            None,
            "5 edits"
        );
        assert_eq!(
            did_you_mean("wf_apitestsuite", ["wf_api-test-suite"]),
            Some("wf_api-test-suite")
        );
        // Equally close: the first listed wins.
        assert_eq!(did_you_mean("ab", ["ac", "ad"]), Some("ac"));
    }
}
