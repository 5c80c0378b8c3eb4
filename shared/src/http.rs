//! Small pieces of HTTP the API serves files with.

/// A single byte range of an object of `size` bytes, inclusive at both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    /// `bytes start-end/size`
    pub fn content_range(&self, size: u64) -> String {
        format!("bytes {}-{}/{size}", self.start, self.end)
    }
}

/// Reads a `Range` header. `Ok(None)`: serve the whole object (no header, several ranges, or a
/// unit we do not serve, which RFC 9110 lets a server ignore). `Err(())`: 416, nothing of it
/// lies in the object.
#[allow(clippy::result_unit_err)]
pub fn parse_range(header: Option<&str>, size: u64) -> Result<Option<ByteRange>, ()> {
    let Some(spec) = header.map(str::trim).and_then(|h| h.strip_prefix("bytes=")) else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = match (a.parse::<u64>().ok(), b.parse::<u64>().ok()) {
        (Some(start), Some(end)) if start <= end => ByteRange {
            start,
            end: end.min(size.saturating_sub(1)),
        },
        (Some(start), None) if b.is_empty() => ByteRange {
            start,
            end: size.saturating_sub(1),
        },
        (None, Some(suffix)) if a.is_empty() && suffix > 0 => ByteRange {
            start: size.saturating_sub(suffix),
            end: size.saturating_sub(1),
        },
        _ => return Ok(None),
    };
    if size == 0 || range.start >= size {
        return Err(());
    }
    Ok(Some(range))
}

/// Whether an `If-None-Match` header matches an entity tag (weak comparison, `*` matches all).
pub fn none_match(header: Option<&str>, etag: &str) -> bool {
    let strip = |t: &str| {
        t.trim()
            .trim_start_matches("W/")
            .trim_matches('"')
            .to_owned()
    };
    header.is_some_and(|h| {
        h.split(',')
            .any(|t| t.trim() == "*" || strip(t) == strip(etag))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = |h: &str| parse_range(Some(h), 100);
        assert_eq!(parse_range(None, 100), Ok(None));
        assert_eq!(r("bytes=0-9"), Ok(Some(ByteRange { start: 0, end: 9 })));
        assert_eq!(r("bytes=90-"), Ok(Some(ByteRange { start: 90, end: 99 })));
        assert_eq!(r("bytes=-10"), Ok(Some(ByteRange { start: 90, end: 99 })));
        assert_eq!(
            r("bytes=95-500"),
            Ok(Some(ByteRange { start: 95, end: 99 })),
            "clamped to the end"
        );
        assert_eq!(r("bytes=100-"), Err(()), "starts past the end");
        assert_eq!(r("bytes=0-1,5-6"), Ok(None), "several ranges: whole object");
        assert_eq!(r("items=0-1"), Ok(None));
        assert_eq!(r("bytes=9-0"), Ok(None));
        assert_eq!(r("bytes=abc"), Ok(None));
        assert_eq!(
            r("bytes=0-9").map(|x| x.map(|x| (x.len(), x.content_range(100)))),
            Ok(Some((10, "bytes 0-9/100".to_owned())))
        );
    }

    #[test]
    fn etags() {
        assert!(none_match(Some("\"abc\""), "\"abc\""));
        assert!(none_match(Some("W/\"abc\", \"x\""), "\"abc\""));
        assert!(none_match(Some("*"), "\"abc\""));
        assert!(!none_match(Some("\"abd\""), "\"abc\""));
        assert!(!none_match(None, "\"abc\""));
    }
}
