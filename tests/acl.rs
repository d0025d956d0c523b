//! Client authentication and ACLs (`[[users]]`): every reply compared byte for byte with a
//! live redis-server given the same users (`ACL SETUSER`), Keyway's ACL facts and glob matching
//! against redis-server's own, real clients (redis-rs, redis-py) logging in, hot reload,
//! `refused_commands`, and `keyway check` on malformed rules.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed assumption is a failed test"
)]

mod support;

use std::time::Duration;

use support::{config_toml, metric, wait_until, Proxy, RawClient, RedisServer};

const APP_PW: &str = "app-secret";
const DEFAULT_PW: &str = "default-secret";

fn sha(pw: &str) -> String {
    keyway::acl::hash(pw.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The rules both sides get (Keyway's passwords as hashes, redis-server's as `>clear`).
const APP_RULES: &str = "on ~app:* %R~ro:* %W~wo:* &chan &news.* +get +set +del +publish \
     +subscribe +psubscribe +multi +exec +acl|whoami +acl|dryrun +acl|cat +client|info +ping";
const DEFAULT_RULES: &str = "on ~* &* +@all";

fn users_toml() -> String {
    format!(
        "[[users]]\nname = \"default\"\npasswords = [\"#{}\"]\nrules = \"{DEFAULT_RULES}\"\n\
         [[users]]\nname = \"app\"\npasswords = [\"#{}\"]\nrules = \"{APP_RULES}\"\n",
        sha(DEFAULT_PW),
        sha(APP_PW)
    )
}

/// A redis-server with the same users as [`users_toml`].
fn direct_with_users() -> RedisServer {
    let direct = RedisServer::start();
    let mut c = RawClient::connect(direct.addr());
    let mut setuser = |name: &str, pw: &str, rules: &str| {
        let mut args = vec!["ACL", "SETUSER", name, "reset"];
        let pass = format!(">{pw}");
        args.push(&pass);
        args.extend(rules.split_whitespace());
        assert_eq!(c.call(&args), b"+OK\r\n", "{args:?}");
    };
    setuser("app", APP_PW, APP_RULES);
    setuser("default", DEFAULT_PW, DEFAULT_RULES);
    direct
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace("\r\n", "\\r\\n")
}

fn same(d: &mut RawClient, k: &mut RawClient, cmd: &[&str]) -> Vec<u8> {
    let want = d.call(cmd);
    let got = k.call(cmd);
    assert_eq!(show(&got), show(&want), "{cmd:?}");
    got
}

#[test]
fn auth_noauth_noperm_and_dryrun_replies_are_redis_servers() {
    let direct = direct_with_users();
    let backend = RedisServer::start();
    let proxy = Proxy::start_toml(&format!("{}{}", config_toml(&[&backend], ""), users_toml()));

    // Not authenticated: NOAUTH for everything but AUTH, HELLO, QUIT, RESET.
    let mut d = RawClient::connect(direct.addr());
    let mut k = RawClient::connect(proxy.addr);
    for cmd in [
        &["GET", "app:1"][..],
        &["PING"],
        &["ACL", "WHOAMI"],
        &["HELLO", "3"],
        &["HELLO", "2", "SETNAME", "x"],
        &["RESET"],
        &["AUTH", "wrong"],
        &["AUTH", "app", "wrong"],
        &["AUTH", "nobody", APP_PW],
        &["AUTH", "a", "b", "c"],
        &["HELLO", "3", "AUTH", "app", "wrong"],
        &["GET", "app:1"],
        &["AUTH", DEFAULT_PW],
        &["ACL", "WHOAMI"],
        &["GET", "app:1"],
    ] {
        same(&mut d, &mut k, cmd);
    }
    // A 1 MB password: WRONGPASS, nothing worse.
    let big = "x".repeat(1 << 20);
    same(&mut d, &mut k, &["AUTH", "app", &big]);
    same(&mut d, &mut k, &["AUTH", &big]);

    // The app user: commands, keys (read, write), channels.
    same(&mut d, &mut k, &["AUTH", "app", APP_PW]);
    for cmd in [
        &["ACL", "WHOAMI"][..],
        &["GET", "app:1"],
        &["GET", "other"],
        &["SET", "app:1", "v"],
        &["GET", "app:1"],
        &["DEL", "app:1"],
        &["DEL", "other"],
        &["INCR", "app:1"],
        &["GET", "ro:1"],
        &["SET", "ro:1", "v"],
        &["SET", "wo:1", "v"],
        &["GET", "wo:1"],
        &["PUBLISH", "chan", "m"],
        &["PUBLISH", "other", "m"],
        &["PUBLISH", "news.today", "m"],
        &["PSUBSCRIBE", "news.*x"],
        &["SUBSCRIBE", "chan", "other"],
        &["ACL", "DRYRUN", "app", "get", "other"],
        &["ACL", "DRYRUN", "app", "get", "app:1"],
        &["ACL", "DRYRUN", "app", "del", "x"],
        &["ACL", "DRYRUN", "app", "publish", "o", "m"],
        &["ACL", "DRYRUN", "app", "set", "ro:1", "v"],
        &["ACL", "DRYRUN", "nobody", "get", "x"],
        &["ACL", "DRYRUN", "app", "nocmd"],
        &["ACL", "DRYRUN", "app", "get"],
        &["ACL", "DRYRUN", "default", "config", "get", "x"],
        &["ACL", "DRYRUN", "app", "config", "get", "x"],
        &["ACL", "CAT", "nosuch"],
        &["ACL", "CAT"],
        &["PING"],
        // A NOPERM while queuing aborts the transaction, as in redis-server.
        &["MULTI"],
        &["SET", "app:2", "v"],
        &["GET", "other"],
        &["EXEC"],
        &["GET", "app:2"],
        // RESET: back to the default user, which has a password: not authenticated.
        &["RESET"],
        &["GET", "app:1"],
    ] {
        same(&mut d, &mut k, cmd);
    }
    // HELLO's map holds the client id, which differs: the same shape.
    for cmd in [
        &["HELLO", "3", "AUTH", "app", APP_PW, "SETNAME", "n1"][..],
        &["HELLO", "2"],
    ] {
        let (want, got) = (d.call(cmd), k.call(cmd));
        let masked = |b: &[u8]| show(b).replace(|c: char| c.is_ascii_digit(), "");
        assert_eq!(masked(&got), masked(&want), "{cmd:?}");
    }
    same(&mut d, &mut k, &["ACL", "WHOAMI"]);
    // CLIENT INFO shows the user.
    let info = String::from_utf8_lossy(&k.call(&["CLIENT", "INFO"])).into_owned();
    assert!(info.contains(" user=app "), "{info}");

    let metrics = proxy.metrics();
    for reason in ["wrong_password", "unknown_user", "noauth", "noperm"] {
        let n = metric(
            &metrics,
            &format!("keyway_auth_failures_total{{reason=\"{reason}\"}}"),
        );
        assert!(n.unwrap_or(0.0) >= 1.0, "{reason}: {n:?}");
    }
}

#[test]
fn acl_cat_key_access_and_glob_are_redis_servers() {
    let direct = RedisServer::start();
    let backend = RedisServer::start();
    let proxy = Proxy::start_toml(&format!(
        "{}[[users]]\nname = \"default\"\nrules = \"on nopass ~* &* +@all\"\n",
        config_toml(&[&backend], "")
    ));
    let mut d = RawClient::connect(direct.addr());
    let mut k = RawClient::connect(proxy.addr);
    same(&mut d, &mut k, &["ACL", "CAT"]);
    let mut dc = direct.client();
    let mut kc = proxy.client();
    for cat in keyway::acl::CATEGORIES {
        let mut want: Vec<String> = redis::cmd("ACL")
            .arg("CAT")
            .arg(cat)
            .query(&mut dc)
            .unwrap();
        let mut got: Vec<String> = redis::cmd("ACL")
            .arg("CAT")
            .arg(cat)
            .query(&mut kc)
            .unwrap();
        // A command of Redis 7.2 that the table carries for clients that send it.
        got.retain(|n| n != "client|setinfo");
        want.sort();
        got.sort();
        assert_eq!(got, want, "@{cat}");
    }

    // The read/write access of each key, as COMMAND GETKEYSANDFLAGS says.
    let cases: &[&[&str]] = &[
        &["GET", "a"],
        &["SET", "a", "v"],
        &["SET", "a", "v", "GET"],
        &["SET", "a", "v", "NX", "get"],
        &["BITFIELD", "a", "GET", "u8", "0"],
        &["BITFIELD", "a", "GET", "u8", "0", "OVERFLOW", "SAT"],
        &["BITFIELD", "a", "SET", "u8", "0", "1"],
        &["BITFIELD", "a", "GET", "u8"],
        &["COPY", "a", "b"],
        &["RENAME", "a", "b"],
        &["LMOVE", "a", "b", "LEFT", "RIGHT"],
        &["BITOP", "AND", "d", "a", "b"],
        &["ZUNIONSTORE", "d", "2", "a", "b"],
        &["SORT", "a", "STORE", "d"],
        &["GEORADIUS", "a", "0", "0", "1", "km", "STORE", "d"],
        &["MSET", "a", "1", "b", "2"],
        &["EVAL", "return 1", "2", "a", "b"],
        &["PFMERGE", "d", "a", "b"],
        &["SMOVE", "a", "b", "m"],
        &[
            "GEOSEARCHSTORE",
            "d",
            "a",
            "FROMLONLAT",
            "0",
            "0",
            "BYRADIUS",
            "1",
            "km",
        ],
        &["XREAD", "STREAMS", "a", "b", "0", "0"],
        &["EXISTS", "a", "b"],
        &["DEL", "a"],
        &["LPUSH", "a", "x"],
        &["SINTERSTORE", "d", "a", "b"],
    ];
    for case in cases {
        let mut args = vec!["COMMAND", "GETKEYSANDFLAGS"];
        args.extend_from_slice(case);
        let reply: Vec<(String, Vec<String>)> = {
            let mut c = redis::cmd(args[0]);
            for a in &args[1..] {
                c.arg(*a);
            }
            c.query(&mut dc).unwrap()
        };
        let req = keyway::protocol::Request::from_args(case);
        let spec = keyway::command::resolve(req.args()).unwrap();
        let mut idx = Vec::new();
        keyway::command::key_indexes(spec, req.args(), &mut idx).unwrap();
        assert_eq!(idx.len(), reply.len(), "{case:?}");
        for (nth, (key, flags)) in reply.iter().enumerate() {
            assert_eq!(case[idx[nth]], key, "{case:?}");
            let flags: Vec<String> = flags.iter().map(|f| f.to_ascii_lowercase()).collect();
            let read = flags.iter().any(|f| f == "access");
            let write = flags
                .iter()
                .any(|f| f == "insert" || f == "delete" || f == "update");
            assert_eq!(
                keyway::command::key_access(spec, req.args(), nth),
                (read, write),
                "{case:?} key {key}: {flags:?}"
            );
        }
    }

    // Keyway's glob is redis-server's: a user with one key pattern, asked with ACL DRYRUN.
    let patterns = [
        "*", "a*", "*a", "a?c", "[abc]*", "[^abc]x", "[a-c]?", "[c-a]", "a\\*b", "\\[x]", "a[",
        "[", "[]]", "[\\]]x", "*:*:*", "a**b", "?", "[a-]", "ab[^]c",
    ];
    let keys = [
        "", "a", "ab", "abc", "a*b", "aXb", "[x]", "x", "dx", "ax", "b", "]x", "a:b:c", "ab]c",
        "-", "a-", "abbbb", "acb",
    ];
    for p in patterns {
        let mut c = RawClient::connect(direct.addr());
        let rule = format!("~{p}");
        assert_eq!(
            c.call(&["ACL", "SETUSER", "g", "reset", "on", "nopass", "+get", &rule]),
            b"+OK\r\n"
        );
        for key in keys {
            if key.is_empty() {
                continue;
            }
            let redis_says = c.call(&["ACL", "DRYRUN", "g", "get", key]) == b"+OK\r\n";
            assert_eq!(
                keyway::acl::glob_match(p.as_bytes(), key.as_bytes()),
                redis_says,
                "pattern {p:?} key {key:?}"
            );
        }
    }
}

#[test]
fn redis_rs_and_redis_py_log_in_with_user_and_password() {
    let backend = RedisServer::start();
    let proxy = Proxy::start_toml(&format!("{}{}", config_toml(&[&backend], ""), users_toml()));
    // redis-rs, RESP2 (AUTH user pass) and RESP3 (HELLO 3 AUTH user pass).
    for proto in ["", "?protocol=resp3"] {
        let url = format!("redis://app:{APP_PW}@{}/{proto}", proxy.addr);
        let mut c = redis::Client::open(url.as_str())
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("SET")
            .arg("app:rs")
            .arg("1")
            .query(&mut c)
            .unwrap();
        let v: String = redis::cmd("GET").arg("app:rs").query(&mut c).unwrap();
        assert_eq!(v, "1");
        let e = redis::cmd("GET")
            .arg("other")
            .query::<Option<String>>(&mut c)
            .unwrap_err();
        assert_eq!(e.code(), Some("NOPERM"), "{e}");
        let bad = format!("redis://app:wrong@{}/{proto}", proxy.addr);
        assert!(redis::Client::open(bad.as_str())
            .unwrap()
            .get_connection()
            .is_err());
    }
    // The default user's password alone (redis://:pw@).
    let url = format!("redis://:{DEFAULT_PW}@{}/", proxy.addr);
    let mut c = redis::Client::open(url.as_str())
        .unwrap()
        .get_connection()
        .unwrap();
    let who: String = redis::cmd("ACL").arg("WHOAMI").query(&mut c).unwrap();
    assert_eq!(who, "default");

    // redis-py, where installed (scripts/ensure-deps.sh installs it).
    let py = format!(
        "import redis\n\
         r = redis.Redis(host='127.0.0.1', port={}, username='app', password='{APP_PW}', protocol=3)\n\
         r.set('app:py', 'v'); assert r.get('app:py') == b'v'\n\
         try:\n    r.get('other'); raise SystemExit('no NOPERM')\n\
         except redis.exceptions.NoPermissionError:\n    pass\n\
         try:\n    redis.Redis(host='127.0.0.1', port={}, username='app', password='x').ping(); raise SystemExit('no WRONGPASS')\n\
         except redis.exceptions.AuthenticationError:\n    pass\n\
         print('ok')\n",
        proxy.addr.port(),
        proxy.addr.port()
    );
    let has_py = std::process::Command::new("python3")
        .args(["-c", "import redis"])
        .status()
        .is_ok_and(|s| s.success());
    if has_py {
        let out = std::process::Command::new("python3")
            .args(["-c", &py])
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stdout.starts_with(b"ok"),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn users_and_password_files_reload_without_a_restart() {
    let backend = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let pw_file = dir.path().join("app-password");
    std::fs::write(&pw_file, "first\n").unwrap();
    let base = config_toml(&[&backend], "");
    let toml = |rules: &str| {
        format!(
            "{base}[[users]]\nname = \"app\"\npassword_file = \"{}\"\nrules = \"{rules}\"\n",
            pw_file.display()
        )
    };
    let path = dir.path().join("keyway.toml");
    std::fs::write(&path, toml("on ~app:* +get")).unwrap();
    let config = keyway::config::Config::load(&path).unwrap();
    let proxy = Proxy::start_toml(&toml("on ~app:* +get"));

    let mut k = RawClient::connect(proxy.addr);
    assert_eq!(k.call(&["AUTH", "app", "first"]), b"+OK\r\n");
    assert!(k.call(&["SET", "app:1", "v"]).starts_with(b"-NOPERM"));
    // The password file is read at each AUTH: a rotated password works at once.
    std::fs::write(&pw_file, "second\n").unwrap();
    let mut k2 = RawClient::connect(proxy.addr);
    assert!(k2
        .call(&["AUTH", "app", "first"])
        .starts_with(b"-WRONGPASS"));
    assert_eq!(k2.call(&["AUTH", "app", "second"]), b"+OK\r\n");
    // A file that disappears: the last passwords read stay.
    std::fs::remove_file(&pw_file).unwrap();
    let mut k3 = RawClient::connect(proxy.addr);
    assert_eq!(k3.call(&["AUTH", "app", "second"]), b"+OK\r\n");
    std::fs::write(&pw_file, "second\n").unwrap();

    // New rules: the connected client has them at its next command.
    std::fs::write(&path, toml("on ~app:* +get +set")).unwrap();
    let reloaded = proxy.block_on(keyway::topology::reload::reload_file(
        &proxy.shared.topology,
        &path,
        &config,
        "test",
    ));
    assert!(reloaded.is_ok());
    assert!(wait_until(Duration::from_secs(5), || k
        .call(&["SET", "app:1", "v"])
        == b"+OK\r\n"));
    // The user turned off: its connections must authenticate again.
    std::fs::write(&path, toml("off ~app:* +get +set")).unwrap();
    let _ = proxy.block_on(keyway::topology::reload::reload_file(
        &proxy.shared.topology,
        &path,
        &config,
        "test",
    ));
    assert!(k.call(&["GET", "app:1"]).starts_with(b"-NOAUTH"));
    assert!(k
        .call(&["AUTH", "app", "second"])
        .starts_with(b"-WRONGPASS"));
    // A malformed rule is refused and the users in force stay.
    std::fs::write(&path, toml("on +nosuchcommand")).unwrap();
    let refused = proxy.block_on(keyway::topology::reload::reload_file(
        &proxy.shared.topology,
        &path,
        &config,
        "test",
    ));
    assert!(refused.is_err());
    assert!(k.call(&["GET", "app:1"]).starts_with(b"-NOAUTH"));
}

#[test]
fn refused_commands_apply_to_every_client_unless_a_user_names_them() {
    let backend = RedisServer::start();
    let base = config_toml(&[&backend], "");
    // No users: every client is the default user without FLUSHALL.
    let proxy = Proxy::start_toml(&format!(
        "refused_commands = [\"flushall\", \"keys\"]\n{base}"
    ));
    let mut k = RawClient::connect(proxy.addr);
    assert_eq!(
        show(&k.call(&["FLUSHALL"])),
        "-NOPERM this user has no permissions to run the 'flushall' command\\r\\n"
    );
    assert!(k.call(&["KEYS", "*"]).starts_with(b"-NOPERM"));
    assert_eq!(k.call(&["SET", "a", "1"]), b"+OK\r\n");
    drop(proxy);
    // A user whose rules name FLUSHALL may run it; +@all alone does not.
    let proxy = Proxy::start_toml(&format!(
        "refused_commands = [\"flushall\"]\n{base}[[users]]\nname = \"default\"\n\
         rules = \"on nopass ~* &* +@all\"\n[[users]]\nname = \"ops\"\npasswords = [\"#{}\"]\n\
         rules = \"on ~* &* +@all +flushall\"\n",
        sha("ops")
    ));
    let mut k = RawClient::connect(proxy.addr);
    assert!(k.call(&["FLUSHALL"]).starts_with(b"-NOPERM"));
    assert_eq!(k.call(&["AUTH", "ops", "ops"]), b"+OK\r\n");
    assert_eq!(k.call(&["FLUSHALL"]), b"+OK\r\n");
}

#[test]
fn keyway_check_names_the_user_and_rule_of_a_malformed_rule() {
    let dir = tempfile::tempdir().unwrap();
    let good = "listen = \"127.0.0.1:6380\"\n[pool]\n[[pool.servers]]\nname = \"a\"\n\
                addr = \"127.0.0.1:7001\"\n";
    for (users, want) in [
        (
            "[[users]]\nname = \"app\"\nrules = \"on ~app:* +nosuch\"\n",
            "user 'app': rule '+nosuch': Unknown command or category name in ACL",
        ),
        (
            "[[users]]\nname = \"app\"\nrules = \"on +@nosuch\"\n",
            "rule '+@nosuch'",
        ),
        (
            "[[users]]\nname = \"app\"\nrules = \"on >clear\"\n",
            "rule '>clear': clear-text passwords",
        ),
        (
            "[[users]]\nname = \"app\"\npasswords = [\"#abc\"]\n",
            "The password hash must be exactly 64 characters",
        ),
        (
            "[[users]]\nname = \"app\"\nrules = \"allkeys ~x\"\n",
            "rule '~x': Adding a pattern after the * pattern",
        ),
        (
            "[[users]]\nname = \"app\"\n[[users]]\nname = \"app\"\n",
            "defined twice",
        ),
    ] {
        let path = dir.path().join("k.toml");
        std::fs::write(&path, format!("{good}{users}")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyway"))
            .args(["check", "--config", path.to_str().unwrap()])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{users}: {text}");
        assert!(text.contains(want), "{users}: {text}");
        assert!(
            text.contains("users[") && text.contains("line "),
            "{users}: {text}"
        );
    }
}
