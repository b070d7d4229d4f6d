//! Redaction: a Redis URL with its password replaced by `***`, and any URL in a message likewise,
//! so that no credential reaches a log, an error or the CLI's output.

/// Replaces the password of a Redis URL (and a `pass=`/`password=` query value) with `***`.
///
/// A user-info part without a colon (`redis://secret@host`) may be a bare password, so it is
/// replaced whole. Text that is not a URL gives `<unparsable Redis URL>`.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some(parts) => parts,
        None => return "<unparsable Redis URL>".to_owned(),
    };
    // Everything before the last `@` is user info, even when it holds a `/` or `?`, so that no
    // part of an unusual password leaks.
    let (authority, tail) = match rest.rfind('@') {
        Some(at) => {
            let (userinfo, after) = (&rest[..at], &rest[at + 1..]);
            let redacted = match userinfo.split_once(':') {
                Some((user, _password)) => format!("{user}:***@"),
                None => "***@".to_owned(),
            };
            let end = after.find(['/', '?', '#']).unwrap_or(after.len());
            (format!("{redacted}{}", &after[..end]), &after[end..])
        }
        None => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            (rest[..end].to_owned(), &rest[end..])
        }
    };
    let tail = match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((k, _))
                        if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
                    {
                        format!("{k}=***")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
}

/// A message with every URL in it redacted as [`redact_url`] does, in case a URL leaked into it.
pub(crate) fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for word in message.split_inclusive(char::is_whitespace) {
        if word.contains("://") {
            let text = word.trim_end();
            out.push_str(&redact_url(text));
            out.push_str(&word[text.len()..]);
        } else {
            out.push_str(word);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_survive_redaction() {
        let cases = [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://:s3cret@host:1/0", "redis://:***@host:1/0"),
            ("rediss://alice:s3cret@host", "rediss://alice:***@host"),
            ("redis://s3cret@host", "redis://***@host"),
            ("redis://u:p%40ss:s3cret@h/2", "redis://u:***@h/2"),
            (
                "redis+unix:///tmp/r.sock?db=1&pass=s3cret",
                "redis+unix:///tmp/r.sock?db=1&pass=***",
            ),
            ("redis://:pa/ss?s3cret@host/1", "redis://:***@host/1"),
            ("not a url s3cret", "<unparsable Redis URL>"),
        ];
        for (url, want) in cases {
            let got = redact_url(url);
            assert_eq!(got, want);
            assert!(!got.contains("s3cret"), "{got}");
        }
    }

    #[test]
    fn urls_in_messages_are_redacted() {
        assert_eq!(
            redact("cannot reach redis://u:s3cret@h:1/0 now"),
            "cannot reach redis://u:***@h:1/0 now"
        );
        assert_eq!(
            redact("(redis://s3cret@h:1)\nand redis://h:2?password=s3cret"),
            "(redis://***@h:1)\nand redis://h:2?password=***"
        );
        assert_eq!(redact("plain text"), "plain text");
    }
}
