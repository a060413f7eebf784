//! Which requests memstore's write-route shortcut takes (see `web::Routes`), shared with the
//! `http_noop` ceiling so both parse exactly the same way.

use percent_encoding::percent_decode_str;

/// The decoded key and value of `/store/{key}/{value}`, or None when the router should decide.
pub fn put_path(path: &str) -> Option<(String, String)> {
    let (key, value) = path.strip_prefix("/store/")?.split_once('/')?;
    if key.is_empty() || value.is_empty() || value.contains('/') {
        return None;
    }
    let decode = |s: &str| {
        percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned())
    };
    Some((decode(key)?, decode(value)?))
}

#[cfg(test)]
mod tests {
    use super::put_path;

    fn owned(key: &str, value: &str) -> Option<(String, String)> {
        Some((key.to_string(), value.to_string()))
    }

    #[test]
    fn put_path_takes_exactly_the_write_route_and_decodes_it() {
        assert_eq!(put_path("/store/k/v"), owned("k", "v"));
        assert_eq!(put_path("/store/a%2Fb/%20x"), owned("a/b", " x"));
        assert_eq!(put_path("/store/caf%C3%A9/ok"), owned("caf\u{e9}", "ok"));
    }

    #[test]
    fn put_path_leaves_every_other_path_to_the_router() {
        for path in [
            "/store/k",
            "/store/k/",
            "/store//v",
            "/store/a/b/c",
            "/store/k/v/",
            "/stores/k/v",
            "/leader",
            "/store/k%FF/v",
            "/store/k/%C3",
        ] {
            assert_eq!(put_path(path), None, "{path}");
        }
    }
}
