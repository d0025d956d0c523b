//! The ACL rule parser and checker: a user's rules (the first line) compiled as `[[users]]`
//! rules are, then a command (the other lines, one argument each) checked against the user,
//! and the glob matcher on the rule text and each argument.
//!
//! Invariants: no panic; a user compiled from `on nopass ~* &* +@all` allows any command the
//! table resolves; `*` matches every non-empty string and a pattern without special characters matches
//! itself.
#![no_main]

use keyway::acl::{glob_match, User};
use keyway::protocol::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let rules = String::from_utf8_lossy(lines.next().unwrap_or_default()).into_owned();
    let args: Vec<&[u8]> = lines.take(16).collect();
    let mut keys = Vec::new();
    if let (Ok(user), false) = (User::compile("fuzz", &rules, &[], None, &[]), args.is_empty()) {
        let request = Request::from_args(&args);
        if let Ok(spec) = keyway::command::resolve(request.args()) {
            let _ = user.check(spec, request.args(), &mut keys);
            let all = User::compile("all", "on nopass ~* &* +@all", &[], None, &[]);
            assert!(all.is_ok_and(|u| u.check(spec, request.args(), &mut keys).is_ok()));
        }
        let _ = user.verify(data);
    }
    for arg in &args {
        let _ = glob_match(rules.as_bytes(), arg);
        // As redis-server's stringmatchlen, nothing matches an empty string but an empty pattern.
        assert_eq!(glob_match(b"*", arg), !arg.is_empty());
        if !arg.iter().any(|b| matches!(b, b'*' | b'?' | b'[' | b'\\')) {
            assert!(glob_match(arg, arg));
        }
    }
});
