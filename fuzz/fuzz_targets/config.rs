//! The configuration loader: TOML text through the same function `Config::load` uses (syntax,
//! figment layering, validation).
//!
//! Invariants: no panic; a config it accepts passes validation again and holds what validation
//! promises.
#![no_main]

use std::path::Path;

use keyway::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Validation reads `admin_token_file`: keep the fuzzer away from files that never end or
    // block (`/dev/zero`, `/dev/stdin`, `/proc/...`), also spelled with unicode escapes.
    if ["/dev", "/proc", "/sys", "\\u", "\\U"]
        .iter()
        .any(|p| text.contains(p))
    {
        return;
    }
    let Ok(config) = Config::from_toml_with_env(text, Path::new("fuzz.toml")) else {
        return;
    };
    assert!(
        config.validate(Some(text)).is_ok(),
        "accepted, then refused"
    );
    assert!((1..=1024).contains(&config.threads));
    assert!(config.limits.max_clients >= 1 && config.limits.max_bulk_len >= 1);
    let _ = config.warnings();
});
